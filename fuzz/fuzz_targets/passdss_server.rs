//! PASSDSS-3DES-1 (spec §3.5, §11.4) on both ends' untrusted input: the broker's server
//! message as the client parses and frames it, and the client's msg1 (and what follows it)
//! as the broker frames it and answers it with a fixed DSA host key.
//!
//! Invariants: nothing panics; lengths handed out never exceed the input; a server message
//! that parses has a host key whose blob re-parses to the same key, and when it is sent as
//! canonical base64 the client's TCP framing (`take_reply`) finds exactly its end; a msg1
//! the broker answers yields a user name of 1..=253 bytes, a reply the client parses with
//! the broker's own host key, and, when canonical, a `msg1_len` of exactly its length.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{FuzzRng, HOST_KEY};
use tsp_proto::client::{Expect, take_reply};
use tsp_proto::sasl::MAX_USER;
use tsp_proto::sasl::passdss::{self, PublicHostKey, ServerExchange};

/// True if `data` is exactly the standard padded base64 of what it decodes to.
fn canonical_b64(data: &[u8]) -> bool {
    STANDARD
        .decode(data)
        .is_ok_and(|raw| STANDARD.encode(raw).as_bytes() == data)
}

/// Client side: the broker's message.
fn server_message(data: &[u8]) {
    let Ok(msg) = passdss::parse_server_message(data) else {
        return;
    };
    let key = PublicHostKey::from_blob(&msg.host_key.blob).expect("parsed blob re-parses");
    assert_eq!(key, msg.host_key.public);
    let blob = msg.host_key.public.blob();
    assert_eq!(PublicHostKey::from_blob(&blob).as_ref(), Ok(&key));
    let line = passdss::known_hosts_line("broker.example.net", &key);
    assert_eq!(
        passdss::check_known_hosts(&line, "broker.example.net", &key),
        passdss::Trust::Known
    );
    assert!(msg.sbuflen < 1 << 24);
    if canonical_b64(data) {
        assert_eq!(
            take_reply(data, Expect::PassDssServerMessage),
            Ok(Some(data.len())),
            "client TCP framing disagrees with the parser on a whole server message"
        );
    }
}

/// Broker side: msg1, the exchange, and whatever follows msg1 taken as msg2.
fn client_messages(data: &[u8]) {
    if let Some(n) = passdss::msg1_len(data) {
        assert!(n <= data.len(), "msg1_len {n} for {} bytes", data.len());
    }
    // msg1 up to the first newline (if any), the rest as msg2.
    let (msg1, msg2) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => data.split_at(i + 1),
        None => (data, &[][..]),
    };
    let mut rng = FuzzRng::default();
    let Ok((exchange, user, reply)) = ServerExchange::respond(msg1, &HOST_KEY, &mut rng) else {
        return;
    };
    assert!(!user.is_empty() && user.len() <= MAX_USER);
    assert_eq!(exchange.user(), user);
    let msg = passdss::parse_server_message(&reply).expect("the broker's reply must parse");
    assert_eq!(&msg.host_key.public, HOST_KEY.public());
    assert_eq!(take_reply(&reply, Expect::PassDssServerMessage), Ok(Some(reply.len())));
    if canonical_b64(msg1) {
        assert_eq!(
            passdss::msg1_len(msg1),
            Some(msg1.len()),
            "broker TCP framing disagrees with the parser on a whole msg1"
        );
    }
    if let Some(n) = exchange.msg2_complete(msg2) {
        assert!(n <= msg2.len(), "msg2_complete {n} for {} bytes", msg2.len());
    }
    let _ = exchange.verify(msg2, |_, _| true);
}

fuzz_target!(|data: &[u8]| {
    server_message(data);
    client_messages(data);
});
