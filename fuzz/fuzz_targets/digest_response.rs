//! The client's DIGEST-MD5 response as the broker reads and checks it (docs/tsp-wire.md
//! §3.4, §11.2): `parse_response`, then `verify_response` against the account's stored hash
//! and the nonce and realm of the §11.2 challenge.
//!
//! Input: a mode byte, then either (bit 0 clear) the response line as sent, or (bit 0 set) the
//! response's fields separated by NUL: username, realm, nonce, cnonce, nc, digest-uri, qop,
//! charset (absent ones take the §11.2 values), from which the target writes a line with the
//! response value computed for `user1`'s password. Bits 1–3 of the mode leave out qop,
//! leave out charset, or write the response value in upper case.
//!
//! Invariants: nothing panics; a response that parses has a user name of 1..=253 bytes and
//! parses back to itself once re-encoded; no response ever verifies for `locked`; the broker
//! accepts a response only for `user1`, the nonce and realm it issued, nc exactly `00000001`
//! (eight hex digits) and qop `auth` or none, and then sends an rspauth the client's check
//! accepts; and a line written from fields is read back to those fields, and accepted
//! exactly when they meet those conditions.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{FuzzBackend, LOCKED, PASSWORD, REALM, USER};
use tsp_proto::sasl::digest_md5::{self, ClientResponse};
use tsp_proto::sasl::{MAX_MESSAGE, MAX_USER};
use tsp_proto::secret::Secret;
use tsp_proto::server::Backend as _;

/// The nonce the broker issued (§11.2).
const NONCE: &str = "1113908968";
const CNONCE: &str = "1113923787";
const DIGEST_URI: &str = "tsp/broker.freenet6.net";

fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// gogoc writes nc, response, qop and charset unquoted; a value that would not survive that
/// is quoted instead.
fn bare_or_quoted(v: &str) -> String {
    let plain = !v.is_empty() && !v.starts_with('"') && v.trim() == v && !v.contains([',', '"', '\\', '\r', '\n']);
    if plain { v.to_owned() } else { quoted(v) }
}

/// A response line in gogoc's field order (§3.4 step 4), base64 + CRLF.
fn encode(r: &ClientResponse) -> Vec<u8> {
    let mut text = String::new();
    if let Some(cs) = &r.charset {
        text += &format!("charset={},", bare_or_quoted(cs));
    }
    text += &format!(
        "username={},realm={},nonce={},nc={},cnonce={},digest-uri={},response={}",
        quoted(&r.username),
        quoted(&r.realm),
        quoted(&r.nonce),
        bare_or_quoted(&r.nc),
        quoted(&r.cnonce),
        quoted(&r.digest_uri),
        bare_or_quoted(&r.response),
    );
    if let Some(qop) = &r.qop {
        text += &format!(",qop={}", bare_or_quoted(qop));
    }
    let mut line = STANDARD.encode(text).into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}

/// What §3.4 lets the broker accept, stated on the fields.
fn acceptable(r: &ClientResponse) -> bool {
    r.username == USER
        && r.nonce == NONCE
        && r.realm == REALM
        && r.nc.len() == 8
        && r.nc.bytes().all(|b| b.is_ascii_hexdigit())
        && u32::from_str_radix(&r.nc, 16) == Ok(1)
        && r.qop.as_deref().is_none_or(|q| q.eq_ignore_ascii_case("auth"))
}

/// The broker's decision on one line, with the checks every decision must pass.
fn check(line: &[u8]) -> Option<Result<(), ()>> {
    let resp = digest_md5::parse_response(line).ok()?;
    assert!(!resp.username.is_empty() && resp.username.len() <= MAX_USER);
    let again = encode(&resp);
    if again.len() <= MAX_MESSAGE {
        assert_eq!(
            digest_md5::parse_response(&again).as_ref(),
            Ok(&resp),
            "re-encoded: {:?}",
            String::from_utf8_lossy(&STANDARD.decode(&again[..again.len() - 2]).unwrap_or_default())
        );
    }
    let backend = FuzzBackend::default();
    let locked = backend.account_ha1(LOCKED).expect("locked account");
    assert!(digest_md5::verify_response(&resp, &locked, NONCE, REALM).is_err());
    let Some(stored) = backend.account_ha1(&resp.username) else {
        return Some(Err(()));
    };
    let Ok(rspauth_line) = digest_md5::verify_response(&resp, &stored, NONCE, REALM) else {
        return Some(Err(()));
    };
    assert!(acceptable(&resp), "accepted: {resp:?}");
    let qop = resp.qop.as_deref().unwrap_or("auth");
    let expected = digest_md5::digest(&stored, NONCE, &resp.cnonce, &resp.nc, qop, "", &resp.digest_uri);
    digest_md5::check_rspauth(&rspauth_line, &expected).expect("the client accepts the broker's rspauth");
    Some(Ok(()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(rest);
        return;
    }
    let text = String::from_utf8_lossy(rest);
    let mut f = text.split('\0');
    let mut field = |default: &str| f.next().unwrap_or(default).to_owned();
    let mut resp = ClientResponse {
        username: field(USER),
        realm: field(REALM),
        nonce: field(NONCE),
        cnonce: field(CNONCE),
        nc: field("00000001"),
        digest_uri: field(DIGEST_URI),
        response: String::new(),
        qop: Some(field("auth")).filter(|_| mode & 2 == 0),
        charset: Some(field("utf8")).filter(|_| mode & 4 == 0),
    };
    let ha1 = digest_md5::ha1(&resp.username, &resp.realm, &Secret::from(PASSWORD));
    let qop = resp.qop.as_deref().unwrap_or("auth");
    resp.response = digest_md5::digest(
        &ha1,
        &resp.nonce,
        &resp.cnonce,
        &resp.nc,
        qop,
        "AUTHENTICATE",
        &resp.digest_uri,
    );
    if mode & 8 != 0 {
        resp.response.make_ascii_uppercase();
    }
    let line = encode(&resp);
    if line.len() > MAX_MESSAGE {
        return;
    }
    let decision = check(&line);
    let user_ok = !resp.username.is_empty() && resp.username.len() <= MAX_USER;
    assert_eq!(decision.is_some(), user_ok, "{resp:?}");
    if let Some(d) = decision {
        assert_eq!(digest_md5::parse_response(&line).as_ref(), Ok(&resp));
        assert_eq!(d.is_ok(), acceptable(&resp), "{resp:?}");
    }
});
