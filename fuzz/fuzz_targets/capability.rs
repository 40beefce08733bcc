//! The `CAPABILITY` line tokenizer (spec §1.7, §3.1, §11.3).
//!
//! Invariants: nothing panics; only known bits come out; and the bits a line parses to
//! survive the broker's writer: `Capabilities { tunnels, auths }.to_line()` parses back to
//! the same bits, terminated and with no ignored token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsp_proto::caps::{self, Capabilities};

const TUNNEL_MASK: u8 = caps::TUNNEL_V6V4 | caps::TUNNEL_V6UDPV4 | caps::TUNNEL_V4V6;
const AUTH_MASK: u8 = caps::AUTH_PASSDSS | caps::AUTH_DIGEST_MD5 | caps::AUTH_PLAIN | caps::AUTH_ANONYMOUS;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = Capabilities::parse(data) else {
        assert!(!Capabilities::is_capability_line(data));
        return;
    };
    assert!(Capabilities::is_capability_line(data));
    assert_eq!(parsed.tunnels & !TUNNEL_MASK, 0, "unknown tunnel bit");
    assert_eq!(parsed.auths & !AUTH_MASK, 0, "unknown auth bit");
    let _ = parsed.describe();

    let bits = Capabilities {
        tunnels: parsed.tunnels,
        auths: parsed.auths,
        ..Default::default()
    };
    let line = bits.to_line();
    let back = Capabilities::parse(&line).expect("to_line() output must parse");
    assert_eq!(
        (back.tunnels, back.auths),
        (parsed.tunnels, parsed.auths),
        "bits changed through to_line(): {:?}",
        String::from_utf8_lossy(&line)
    );
    assert!(!back.unterminated);
    assert_eq!(back.ignored_tokens, 0);
});
