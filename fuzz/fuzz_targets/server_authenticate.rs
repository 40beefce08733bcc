//! The client's `AUTHENTICATE <MECH>\r\n\0` as the broker reads it, and the messages that
//! follow it (docs/tsp-wire.md §3.1–§3.5, §10 item 1).
//!
//! Input: two `Setup` bytes (transport, mechanisms offered, refusals, account store down,
//! how lookups are answered; not the redirector or a busy broker), then what the client
//! sends after `VERSION=2.0.0\r\n`, cut into pieces at every `|||` as in `server_session`:
//! TCP stream pieces or RUDP datagram payloads.
//!
//! Invariants: the `Driver`'s; and the first line picks the mechanism as §3 says. A mechanism
//! the broker offers (its name in any case) gets, for ANONYMOUS, `200 Success`; for
//! DIGEST-MD5, a challenge the client's parser reads, with the broker's realm, a fresh
//! 16-digit nonce and qop `auth`; for PLAIN and PASSDSS-3DES-1, nothing until their next
//! message. One it does not offer gets `300 Authentication failed` and ends the session; a
//! line that is not AUTHENTICATE ends it unanswered. A PLAIN login succeeds only if the
//! stream holds `user1`'s password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{Driver, PASSWORD, REALM, Setup, USER, pieces};
use tsp_proto::client::Transport;
use tsp_proto::sasl::{Mechanism, digest_md5};
use tsp_proto::types::MAX_MESSAGE;

fuzz_target!(|data: &[u8]| {
    let Some((setup, rest)) = Setup::read(data) else {
        return;
    };
    let setup = setup.without(Setup::REDIRECT | Setup::BUSY);
    let mut d = Driver::new(setup);
    d.send(b"VERSION=2.0.0\r\n");
    assert_eq!(d.log.replies.len(), 1, "CAPABILITY");
    let mut stream = Vec::new();
    let udp = setup.transport() == Transport::Udp;
    let mut later_datagrams = false;
    let mut sent = Vec::new();
    for (i, piece) in pieces(rest).enumerate() {
        if udp && piece.starts_with(b"VERSION=") {
            // Would start a new session (server_session covers that); this target follows one.
            continue;
        }
        d.send(piece);
        sent.extend_from_slice(piece);
        // Over RUDP the first datagram alone carries the AUTHENTICATE line.
        if i == 0 || !udp {
            stream.extend_from_slice(piece);
        } else {
            later_datagrams = true;
        }
    }

    d.settle();

    let Some(end) = stream.iter().position(|&b| b == b'\n').filter(|&i| i < MAX_MESSAGE) else {
        return;
    };
    let line = &stream[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(name) = line.strip_prefix(b"AUTHENTICATE ") else {
        assert!(
            d.log.closed && d.log.replies.len() == 1,
            "a line other than AUTHENTICATE was answered"
        );
        return;
    };
    let chosen = Mechanism::from_wire(String::from_utf8_lossy(name).trim()).filter(|m| setup.offers(*m));
    let answer = d.log.replies.get(1);
    match chosen {
        None => {
            assert_eq!(answer.map(Vec::as_slice), Some(&b"300 Authentication failed\r\n"[..]));
            assert!(d.log.closed && d.log.replies.len() == 2 && d.log.logins.is_empty());
        }
        Some(Mechanism::Anonymous) => {
            assert_eq!(answer.map(Vec::as_slice), Some(&b"200 Success\r\n"[..]));
        }
        Some(Mechanism::DigestMd5) => {
            let ch = digest_md5::parse_challenge(answer.expect("a DIGEST-MD5 challenge"))
                .expect("the client reads the broker's challenge");
            assert_eq!(ch.realm.as_deref(), Some(REALM));
            assert_eq!(ch.qop.as_deref(), Some("auth"));
            assert!(ch.nonce.len() == 16 && ch.nonce.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        Some(Mechanism::Plain | Mechanism::PassDss3Des1) => {
            let after = &stream[end + 1..];
            if (after.is_empty() || after == b"\0") && !later_datagrams {
                assert_eq!(d.log.replies.len(), 1, "answered before the credentials came");
            }
        }
    }
    if chosen == Some(Mechanism::Plain) && d.log.logins.iter().any(|l| l.ok) {
        let credentials = format!("{USER}\0{PASSWORD}");
        assert!(sent.windows(credentials.len()).any(|w| w == credentials.as_bytes()));
    }
});
