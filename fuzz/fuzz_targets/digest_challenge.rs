//! DIGEST-MD5 as TSP speaks it (spec §3.4, §11.2): the broker's challenge as the client reads
//! it, the client's response as the broker reads it, and the rspauth check.
//!
//! Invariants: nothing panics; bounded fields stay in bounds; and a challenge that parses
//! drives a whole exchange: the client's response to it parses on the broker side with the
//! same nonce and realm, verifies against the same password, and the broker's rspauth line
//! passes the client's check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsp_proto::sasl::MAX_USER;
use tsp_proto::sasl::digest_md5;
use tsp_proto::secret::Secret;

const USER: &str = "user1";
const SERVER: &str = "broker.freenet6.net";
const CNONCE: &str = "1113923787";

/// `charset` is echoed unquoted (as gogoc does), so only a plain token survives the trip.
fn plain_token(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'"')
}

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = digest_md5::parse_response(data) {
        assert!(!resp.username.is_empty() && resp.username.len() <= MAX_USER);
    }
    let _ = digest_md5::check_rspauth(data, "41f3384bcd824d1189743b50e3bcb786");

    let Ok(ch) = digest_md5::parse_challenge(data) else {
        return;
    };
    assert!(!ch.nonce.is_empty());
    if !ch.charset.as_deref().is_none_or(plain_token) {
        return;
    }
    let password = Secret::from("pass1");
    let (line, expected_rspauth) = digest_md5::client_response(&ch, USER, &password, SERVER, CNONCE);
    assert!(line.ends_with(b"\r\n"));
    let realm = ch.realm.as_deref().unwrap_or("");
    let resp = digest_md5::parse_response(&line).unwrap_or_else(|e| {
        panic!(
            "client response does not parse ({e}): {:?}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(resp.username, USER);
    assert_eq!(resp.nonce, ch.nonce);
    assert_eq!(resp.realm, realm);
    assert_eq!(resp.cnonce, CNONCE);
    assert_eq!(resp.digest_uri, format!("tsp/{SERVER}"));
    assert_eq!(resp.charset, ch.charset);
    let stored = digest_md5::ha1(USER, realm, &password);
    let rspauth_line = digest_md5::verify_response(&resp, &stored, &ch.nonce, realm)
        .unwrap_or_else(|e| panic!("broker rejects the client's own response: {e}"));
    digest_md5::check_rspauth(&rspauth_line, &expected_rspauth)
        .unwrap_or_else(|e| panic!("client rejects the broker's rspauth: {e}"));
});
