//! The client's `accept` as the broker reads it: `Content-length: N\r\n` +
//! `<tunnel action="accept"></tunnel>\r\n` after an offer (docs/tsp-wire.md §1.2, §4.2).
//!
//! Input: two `Setup` bytes (transport, how lookups are answered), then what the client
//! sends after an anonymous login
//! and the `create` request of the real gogoc capture (v6anyv4 over TCP), cut at every `|||` as in
//! `server_session`; the first piece is the accept.
//!
//! Invariants: the `Driver`'s; and the first piece establishes the tunnel exactly when it is
//! a whole frame whose document is a `<tunnel>` element with `action="accept"` (any case),
//! with the offer the broker made; the broker answers an accept with nothing but the RUDP
//! acknowledgement; a frame that is not an accept ends the session; an incomplete one waits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{Driver, Setup, pieces};
use tsp_proto::client::Transport;
use tsp_proto::sasl::Mechanism;
use tsp_proto::{frame, xml};

/// gogoc's request in the capture (tests/data/gogoc-tsps-anon-udp.txt): v6udpv4 from 192.0.2.2.
const CAPTURE_CREATE: &str = "<tunnel action=\"create\" type=\"v6udpv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">192.0.2.2</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((setup, rest)) = Setup::read(data) else {
        return;
    };
    let setup = Setup(setup.0 & (Setup::UDP | Setup::ASYNC | Setup::LATE)).with(Setup::ANONYMOUS);
    let udp = setup.transport() == Transport::Udp;
    let mut d = Driver::new(setup);
    d.send(b"VERSION=2.0.2\r\n");
    d.send(Mechanism::Anonymous.authenticate_line());
    let create = if udp {
        CAPTURE_CREATE.to_owned()
    } else {
        // v6udpv4 cannot run over TCP: there the same client leaves the choice to the broker.
        CAPTURE_CREATE.replace("v6udpv4", "v6anyv4")
    };
    d.send(&frame::frame_request(&create));
    d.settle();
    let offered = d
        .backend
        .offers
        .first()
        .cloned()
        .expect("the capture's request gets an offer");
    assert_eq!(d.log.replies.len(), 3, "CAPABILITY, 200, offer");

    let mut pieces = pieces(rest);
    let accept = pieces.next().unwrap_or_default();
    if udp && accept.starts_with(b"VERSION=") {
        // Starts a new session (server_session covers that): no accept to look at.
        return;
    }
    let ack = d.send(accept);
    assert!(ack.is_empty() && d.log.replies.len() == 3, "an accept was answered");
    let established = d.log.established.clone();
    let closed = d.log.closed;
    for piece in pieces {
        if !(udp && piece.starts_with(b"VERSION=")) {
            d.send(piece);
        }
    }

    match frame::take_framed(accept, false) {
        Ok(Some((body, _))) if xml::parse_accept(body).is_ok() => {
            assert_eq!(established, Some(offered));
            let text = String::from_utf8_lossy(body).to_ascii_lowercase();
            assert!(text.contains("<tunnel") && text.contains("accept"));
        }
        Ok(None) => assert!(established.is_none() && !closed),
        _ => assert!(established.is_none() && closed),
    }
});
