//! The client's first message as the broker reads it: `VERSION=2.0.x\r\n`, answered with
//! CAPABILITY, `302` or a redirection (docs/tsp-wire.md §1.2, §1.7 item 1, §4.4).
//!
//! Input: two `Setup` bytes (transport, old versions only, redirector, busy broker), then
//! the bytes the client sends first: the TCP stream, or the payload of one RUDP datagram.
//!
//! Invariants: the `Driver`'s; and the first line is answered as §1.7 says: a version the
//! broker speaks (1.0.1 only over TCP) gets the broker's CAPABILITY line, which the client's
//! parser reads back to the same bits, or in redirector mode a `1200` status whose broker
//! list the client reads back, or from a busy broker `530` with its reason, which ends the
//! session; another `VERSION=` gets exactly `302 Unsupported client version` and ends the
//! session; anything else ends it without an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{BUSY_REASON, Driver, Setup, redirect_list};
use tsp_proto::caps::Capabilities;
use tsp_proto::client::{Expect, Transport, take_reply};
use tsp_proto::types::MAX_MESSAGE;
use tsp_proto::{StatusCode, Version, frame, xml};

fuzz_target!(|data: &[u8]| {
    let Some((setup, msg)) = Setup::read(data) else {
        return;
    };
    if msg.len() > 2 * MAX_MESSAGE {
        // Refused before it is looked at: the broker buffers at most 8 KB.
        return;
    }
    // Mechanisms and refusals play no part before AUTHENTICATE.
    let setup =
        Setup(setup.0 & (Setup::UDP | Setup::OLD_VERSIONS | Setup::REDIRECT | Setup::BUSY)).with(Setup::ANONYMOUS);
    let cfg = setup.config();
    let mut d = Driver::new(setup);
    d.send(msg);
    let udp = setup.transport() == Transport::Udp;
    if udp && !msg.starts_with(b"VERSION=") {
        // tsp-broker starts a session only on VERSION=; other datagrams find none.
        assert!(d.session().is_none() && d.log.replies.is_empty());
        return;
    }

    let line = match msg.iter().position(|&b| b == b'\n') {
        Some(i) if i < MAX_MESSAGE => &msg[..i],
        _ => {
            assert!(d.log.replies.is_empty(), "a reply before the version line ended");
            assert_eq!(d.log.closed, msg.len() >= MAX_MESSAGE);
            return;
        }
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(asked) = line.strip_prefix(b"VERSION=") else {
        assert!(
            d.log.replies.is_empty() && d.log.closed,
            "a line other than VERSION= was answered"
        );
        return;
    };
    let asked = String::from_utf8_lossy(asked);
    let spoken = cfg
        .versions
        .iter()
        .copied()
        .find(|v| v.as_str() == asked.trim() && !(udp && *v == Version::V1_0_1));
    let first = d.log.replies.first().expect("a VERSION= line is always answered");
    let Some(version) = spoken else {
        assert_eq!(first.as_slice(), b"302 Unsupported client version\r\n");
        assert!(d.log.closed && d.log.replies.len() == 1);
        return;
    };
    assert_eq!(d.log.version, Some(version));
    if setup.has(Setup::BUSY) {
        assert_eq!(*first, format!("530 Server too busy: {BUSY_REASON}\r\n").as_bytes());
        assert!(d.log.closed && d.log.replies.len() == 1);
        let status = frame::parse_status_line(first).expect("the client reads the status");
        assert_eq!(status.status, StatusCode::ServerTooBusy);
    } else if setup.has(Setup::REDIRECT) {
        assert!(d.log.closed && d.log.replies.len() == 1);
        assert_eq!(take_reply(first, Expect::Line), Ok(Some(first.len())));
        let (status, body) = frame::split_status(first).expect("redirect status line");
        assert_eq!(status.status.code(), 1200);
        assert_eq!(
            xml::parse_redirect(body).expect("the client reads the broker list"),
            xml::redirect_try_order(&redirect_list())
        );
    } else {
        assert_eq!(*first, cfg.capabilities.to_line());
        let caps = Capabilities::parse(first).expect("the client reads CAPABILITY");
        assert_eq!(
            (caps.tunnels, caps.auths),
            (cfg.capabilities.tunnels, cfg.capabilities.auths)
        );
        assert!(!caps.unterminated && caps.ignored_tokens == 0);
    }
});
