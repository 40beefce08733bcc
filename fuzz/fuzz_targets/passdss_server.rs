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

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use tsp_proto::client::{Expect, take_reply};
use tsp_proto::sasl::MAX_USER;
use tsp_proto::sasl::passdss::{self, HostKeyPair, PublicHostKey, ServerExchange};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

/// The DSA key of the §11.4 vector in `HostKeyPair::to_text` form (generating one is slow).
const HOST_KEY_TEXT: &str = "\
# nm-tsp PASSDSS-3DES-1 broker host key (DSA). Keep private.
p 92bbf64ddd4de717d0d5e870ec5069db9a724c97db84fcf3a443ed464d612920537b8eaa373800b0d393bf6caf949a50b05fbe926b035269cd1b2c60db7d2ba7793c091ae1cc86e677e6cf487d09298fa63a5983150a1701d0f90edba6c5cd185304a5fa662031ac6e87a1b861cd0a59af88e69374b15b872f3ac3bef6e509dd
q 8d6b1f57e2c7be9e6471db7dc662caabad4f729d
g 1a7a72408fc1df5f3f464f2f3c04d6b0c96aa272617bc4c9ca33ab47810d35910837f104c3f2297b40e1cdec9997865998ec1b3460207e4bf847e1d2782c47a99fc0b3c2357e5ad83740036da4513043731e0a9b72060fcafd0a5438c6eafa482007f39df238f573cc3dc5a33479844ad91472e63c58bccef7f27184e7cba848
x 138adcd0fb98f6bbfcacf6d922a1777c78d618c5
y 493199d6344e3c58600e6ad9ed620a7b1457fc604a7e53be5cc21803af5250f8fa8c82e293f70b35b7ee7a72d5f396d42eb8aba5588b0f108803839eb1e394559ce6573e529fb56b36d046e146c9e615f5a95f2c9ccad752b80a622ec935e13a8d1b71a4e3d9a7d5195dd4ef476efac959edcf4c5a8212c6bd14b8e75be7f3db
";

static HOST_KEY: LazyLock<HostKeyPair> =
    LazyLock::new(|| HostKeyPair::from_text(HOST_KEY_TEXT).expect("the §11.4 host key must load"));

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
    let mut rng = StdRng::seed_from_u64(0x7e57);
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
