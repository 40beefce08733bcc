//! Tests of PASSDSS-3DES-1 (docs/tsp-wire.md §3.5, §3.6), with the §11.4 byte vectors.

use std::sync::LazyLock;

use base64::Engine as _;
use hmac::Mac as _;
use num_bigint::BigUint;
use num_traits::{One as _, Zero as _};
use proptest::prelude::*;

use super::client::*;
use super::crypto::*;
use super::encoding::*;
use super::hostkey::*;
use super::server::*;
use super::*;
use crate::sasl::{SaslError, b64_encode};
use crate::secret::Secret;

fn hex(s: &str) -> BigUint {
    BigUint::parse_bytes(s.as_bytes(), 16).unwrap()
}

fn hexb(bytes: &[u8]) -> String {
    super::super::hex_lower(bytes)
}

fn b64d(s: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

const P: &str = "92bbf64ddd4de717d0d5e870ec5069db9a724c97db84fcf3a443ed464d612920537b8eaa373800b0d393bf6caf949a50b05fbe926b035269cd1b2c60db7d2ba7793c091ae1cc86e677e6cf487d09298fa63a5983150a1701d0f90edba6c5cd185304a5fa662031ac6e87a1b861cd0a59af88e69374b15b872f3ac3bef6e509dd";
const Q: &str = "8d6b1f57e2c7be9e6471db7dc662caabad4f729d";
const G: &str = "1a7a72408fc1df5f3f464f2f3c04d6b0c96aa272617bc4c9ca33ab47810d35910837f104c3f2297b40e1cdec9997865998ec1b3460207e4bf847e1d2782c47a99fc0b3c2357e5ad83740036da4513043731e0a9b72060fcafd0a5438c6eafa482007f39df238f573cc3dc5a33479844ad91472e63c58bccef7f27184e7cba848";
const X_DSA: &str = "138adcd0fb98f6bbfcacf6d922a1777c78d618c5";
const Y_DSA: &str = "493199d6344e3c58600e6ad9ed620a7b1457fc604a7e53be5cc21803af5250f8fa8c82e293f70b35b7ee7a72d5f396d42eb8aba5588b0f108803839eb1e394559ce6573e529fb56b36d046e146c9e615f5a95f2c9ccad752b80a622ec935e13a8d1b71a4e3d9a7d5195dd4ef476efac959edcf4c5a8212c6bd14b8e75be7f3db";
const X_DH: &str = "e6345d116cb6191513a873171a510d0b5969e76a0becf0ba6e674516fff5a2c7";
const Y_DH: &str = "ab5a5c30becbe261e1fec1ba0f36ce7b036261134c9f5aa65a2c9f2f0ceca1f6";
const K_DSA: &str = "6230323d2cbb5ebaa6690af0448c17b2b3a280eb";
const MSG1: &str = "AAAAAAAAAAV1c2VyMQAAAIBP2KT7vXeLqrhjNL+MCe2B3zE0wsK7T6y4D2v3cCFx4QyOx61zyYcF/YXERMA0UmCiit9fkvO+k/+X368mPYXyALuP9xk+m7rcJ+zKSNq+CK3tRjqbGDAT9KztvYtrJHe1ylNAfwAB1abSyhN9L/75/ZhiHvrbxso7KmNCcoOjQA==";
const SERVER_MSG: &str = "AAABrwAAAAdzc2gtZHNzAAAAgJK79k3dTecX0NXocOxQaduackyX24T886RD7UZNYSkgU3uOqjc4ALDTk79sr5SaULBfvpJrA1JpzRssYNt9K6d5PAka4cyG5nfmz0h9CSmPpjpZgxUKFwHQ+Q7bpsXNGFMEpfpmIDGsboehuGHNClmviOaTdLFbhy86w7725QndAAAAFI1rH1fix76eZHHbfcZiyqutT3KdAAAAgBp6ckCPwd9fP0ZPLzwE1rDJaqJyYXvEycozq0eBDTWRCDfxBMPyKXtA4c3smZeGWZjsGzRgIH5L+Efh0ngsR6mfwLPCNX5a2DdAA22kUTBDcx4Km3IGD8r9ClQ4xur6SCAH853yOPVzzD3FozR5hErZFHLmPFi8zvfycYTny6hIAAAAgEkxmdY0TjxYYA5q2e1iCnsUV/xgSn5TvlzCGAOvUlD4+oyC4pP3CzW37npy1fOW1C64q6VYiw8QiAODnrHjlFWc5lc+Up+1azbQRuFGyeYV9alfLJzK11K4CmIuyTXhOo0bcaTj2afVGV3U70du+slZ7c9MWoISxr0UuOdb5/PbAAAAgO2Lu2K9fcV8waXrY51qfCTNTHGAOxNc6jULCKQqhDQcb1FW5yGYuKu1Jxl9tQNNk8ZzHr0m3ye2F+djoLrSinmMm5gRaDQVEiz0uQHkNp3IDWTHczb72BpF+b4dISLHxbaeSlsJTDnQcH/znNcySP6AeWa7Kqb1p/cWMJ8kcf8ZAQAAAAAAADsAAAAHc3NoLWRzcwAAABQvC0eglbmfzAH1ZvyUZb0quWdcggAAABQyIox7pJ97bnHlg+bmWnvN4ZWSHg==";
const MSG2: &str = "ZsYKlGeCmcPSUXUrhURNEQiErfoW/DMS1bFaxUQhAFeVSCe2JBzz4A==";
/// Printed by docs/vectors/passdss_vector.py (keyfile_line).
const KEYFILE_LINE: &str = "broker.example.net ssh-dss AAAAB3NzaC1kc3MAAACAkrv2Td1N5xfQ1ehw7FBp25pyTJfbhPzzpEPtRk1hKSBTe46qNzgAsNOTv2yvlJpQsF++kmsDUmnNGyxg230rp3k8CRrhzIbmd+bPSH0JKY+mOlmDFQoXAdD5Dtumxc0YUwSl+mYgMaxuh6G4Yc0KWa+I5pN0sVuHLzrDvvblCd0AAAAUjWsfV+LHvp5kcdt9xmLKq61Pcp0AAACAGnpyQI/B318/Rk8vPATWsMlqonJhe8TJyjOrR4ENNZEIN/EEw/Ipe0DhzeyZl4ZZmOwbNGAgfkv4R+HSeCxHqZ/As8I1flrYN0ADbaRRMENzHgqbcgYPyv0KVDjG6vpIIAfznfI49XPMPcWjNHmEStkUcuY8WLzO9/JxhOfLqEgAAACASTGZ1jROPFhgDmrZ7WIKexRX/GBKflO+XMIYA69SUPj6jILik/cLNbfuenLV85bULrirpViLDxCIA4OeseOUVZzmVz5Sn7VrNtBG4UbJ5hX1qV8snMrXUrgKYi7JNeE6jRtxpOPZp9UZXdTvR276yVntz0xaghLGvRS451vn89s=";

fn vector_key() -> HostKeyPair {
    HostKeyPair::from_private(hex(P), hex(Q), hex(G), hex(X_DSA)).unwrap()
}

fn pass_ok(user: &str, pass: &Secret) -> bool {
    user == "user1" && pass.expose() == "pass1"
}

/// The vector's server exchange, built once (modpow is slow in debug builds).
static VECTOR_SERVER: LazyLock<ServerExchange> = LazyLock::new(|| {
    ServerExchange::respond_with(MSG1.as_bytes(), &vector_key(), &hex(Y_DH), &hex(K_DSA))
        .unwrap()
        .0
});

#[test]
fn dh_prime_is_group_2() {
    assert_eq!(DH_P.bits(), 1024);
    assert_eq!(bn_magnitude(&DH_P).len(), 128);
}

#[test]
fn encodings() {
    let mut out = Vec::new();
    put_u32(&mut out, 0x0102_0304);
    put_string(&mut out, b"ab");
    put_bn(&mut out, &BigUint::from(0x80u32));
    put_bn(&mut out, &BigUint::zero());
    assert_eq!(out, [1, 2, 3, 4, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, 0x80, 0, 0, 0, 0]);
    let mut padded = Vec::new();
    put_bn_padded(&mut padded, &BigUint::from(0x1234u32), 4);
    assert_eq!(padded, [0, 0, 0, 4, 0, 0, 0x12, 0x34]);
    // leading zeros tolerated on input
    let mut rd = Reader::new(&[0, 0, 0, 3, 0, 0, 7], SaslError::MalformedResponse);
    assert_eq!(rd.bn(1, "x").unwrap(), BigUint::from(7u32));
    let mut rd = Reader::new(&[0, 0, 0, 2, 1, 7], SaslError::MalformedResponse);
    assert_eq!(rd.bn(1, "x"), Err(SaslError::OutOfBounds("x")));
    let mut rd = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1], SaslError::MalformedResponse);
    assert!(rd.string("s").is_err());
}

#[test]
fn vector_11_4() {
    let key = vector_key();
    assert_eq!(key.public.y, hex(Y_DSA));

    let (client, msg1) = ClientExchange::start_with_secret("user1", &hex(X_DH));
    assert_eq!(msg1, MSG1.as_bytes());
    assert_eq!(msg1_len(&msg1), Some(msg1.len()));

    let (server, user, smsg) = ServerExchange::respond_with(&msg1, &key, &hex(Y_DH), &hex(K_DSA)).unwrap();
    assert_eq!(user, "user1");
    assert_eq!(String::from_utf8(smsg.clone()).unwrap(), SERVER_MSG);

    let msg = parse_server_message(&smsg).unwrap();
    assert_eq!(msg.host_key.blob.len(), 431);
    assert_eq!(msg.host_key.public, *key.public());
    assert_eq!(msg.ssecmask, 1);
    assert_eq!(msg.sbuflen, 0);
    assert_eq!(msg.r, hex("2f0b47a095b99fcc01f566fc9465bd2ab9675c82"));
    assert_eq!(msg.s, hex("32228c7ba49f7b6e71e583e6e65a7bcde195921e"));
    // siglength 59: the 4 bytes after ssecmask/sbuflen
    let raw = b64d(&smsg);
    assert_eq!(raw.len(), 4 + 431 + 4 + 128 + 4 + 4 + 59);

    // Intermediate values, computed with the same helpers finish() uses.
    let k = msg.dh_public.modpow(&hex(X_DH), &DH_P);
    assert_eq!(bn_magnitude(&k).len(), 128);
    let k_enc = bn_encoded(&k);
    let hb = hbuf(b64d(&msg1).as_slice(), &msg.host_key.blob, &msg.dh_public, 1, 0);
    let h = exchange_hash(&hb, &k_enc);
    assert_eq!(hexb(&h), "051322a6aec80fc1c756788b5f87a1fb25d462d2");
    let keys = derive_keys(&k_enc, &h);
    assert_eq!(hexb(&keys.iv), "7ee03d581d43fdc1");
    assert_eq!(hexb(&keys.key), "07654ab9a04e63ad90ae3d217c79f81480d7cd87f48e5483");
    assert_eq!(hexb(&keys.int), "b27ec5ea866ca69693677c3f8c00083f4ac5f05d");
    let j = build_j(1, &Secret::from("pass1"));
    assert_eq!(hexb(&j), "01000000000000057061737331");
    let mac = client_mac(&keys.int, &hb, &j[..4]).finalize().into_bytes();
    assert_eq!(hexb(&mac), "f086c4cfc855fca5616d561bbeb5d8464b173cd4");

    let msg2 = client.finish(&msg, &Secret::from("pass1")).unwrap();
    assert_eq!(String::from_utf8(msg2.clone()).unwrap(), MSG2);
    assert_eq!(server.msg2_complete(&msg2), Some(msg2.len()));
    server.verify(&msg2, pass_ok).unwrap();

    assert_eq!(
        known_hosts_line("broker.example.net", key.public()),
        format!("{KEYFILE_LINE}\n")
    );
    assert!(KEYFILE_LINE.starts_with("broker.example.net ssh-dss AAAAB3NzaC1kc3MAAACAkrv2"));
}

#[test]
fn framing_helpers() {
    let msg1 = MSG1.as_bytes();
    for cut in 0..msg1.len() {
        assert_eq!(msg1_len(&msg1[..cut]), None, "cut {cut}");
    }
    assert_eq!(msg1_len(msg1), Some(msg1.len()));
    let mut more = msg1.to_vec();
    more.extend_from_slice(b"\r\n");
    assert_eq!(msg1_len(&more), Some(msg1.len()));
    // Invalid: the text as far as it goes (what follows it is not msg1's).
    assert_eq!(msg1_len(b"AAA*"), Some(3));
    // A client that does not wait for the server message (found by fuzz/server_session):
    // msg1 ends in padding, and base64 after it once made the whole read look invalid.
    let coalesced = [msg1, MSG2.as_bytes()].concat();
    assert!(msg1.ends_with(b"=="));
    assert_eq!(msg1_len(&coalesced), Some(msg1.len()));
    assert_eq!(msg1_len(&coalesced[..msg1.len() + 3]), Some(msg1.len()));
    // Non-zero bits after the last byte: the parser tolerates them, so the framing must
    // too, or it reported such a msg1 "invalid" (the whole read) and the parser took it.
    let loose = MSG1.replace("QA==", "QD==");
    assert!(ServerExchange::respond(loose.as_bytes(), &vector_key(), &mut rand::rngs::OsRng).is_ok());
    let coalesced = [loose.as_bytes(), MSG2.as_bytes()].concat();
    assert_eq!(msg1_len(&coalesced), Some(loose.len()));
    // Unpadded, then NULs and the next message (found by fuzz/server_session in a long run):
    // msg1 holds every byte, so it is whole, wherever the stream was cut after it; it was
    // "invalid" up to the end of the read, which the parser took when the read ended at
    // the NULs and refused when msg2 came with them.
    let unpadded = MSG1.trim_end_matches('=');
    assert!(ServerExchange::respond(unpadded.as_bytes(), &vector_key(), &mut rand::rngs::OsRng).is_ok());
    for after in ["\0\0", "\0\0AJF1s2fx0BUx"] {
        assert_eq!(
            msg1_len(format!("{unpadded}{after}").as_bytes()),
            Some(unpadded.len()),
            "{after:?}"
        );
    }
    assert_eq!(msg1_len(unpadded.as_bytes()), None, "more may come");
    // Only msg1's own characters count: its structure ends 40 characters in, so what
    // follows (here misplaced padding, then more base64) is not msg1's to judge.
    let short = "AAAAAAAAAAV1c2VyLQAAAA0UmCiit9fkvO+k/+X368mP";
    assert_eq!(msg1_len(format!("{short}D==AJF1").as_bytes()), Some(40));
    assert_eq!(msg1_len(format!("{short}D==").as_bytes()), Some(40));
    // The text ended before the structure did: nothing more can complete it.
    assert_eq!(msg1_len(b"AAAAAAAAAAV1c2Vy===="), Some(20));
    assert_eq!(msg1_len(b"AAAAAAAAAAV1c2Vy=\r\n"), Some(17));
    assert_eq!(msg1_len(b"AAAAAAAAAAV1c2Vy="), None);
    // user length 0x10000 > 253: known invalid at once
    assert_eq!(msg1_len(b"AAAAAAABAAA="), Some(12));

    let server = &*VECTOR_SERVER;
    let msg2 = MSG2.as_bytes();
    for cut in 0..msg2.len() {
        assert_eq!(server.msg2_complete(&msg2[..cut]), None, "cut {cut}");
    }
    assert_eq!(server.msg2_complete(msg2), Some(msg2.len()));
    assert_eq!(server.msg2_complete(b"ab!"), Some(2));
}

/// Password "abcd": 32 plaintext bytes, so PKCS#7 adds a whole block. Expected value from
/// passdss_vector.py with only the password changed.
#[test]
fn full_padding_block_matches_generator() {
    let (client, _) = ClientExchange::start_with_secret("user1", &hex(X_DH));
    let msg = parse_server_message(SERVER_MSG.as_bytes()).unwrap();
    let msg2 = client.finish(&msg, &Secret::from("abcd")).unwrap();
    assert_eq!(
        String::from_utf8(msg2.clone()).unwrap(),
        "3CLBptkIjGVn1ci/716jNZsDIw8oJ4vGPLEpqXhbY3hsCty6GZkt0A=="
    );
    assert_eq!(VECTOR_SERVER.msg2_complete(&msg2), Some(msg2.len()));
    VECTOR_SERVER
        .clone()
        .verify(&msg2, |u, p| u == "user1" && p.expose() == "abcd")
        .unwrap();
}

#[test]
fn msg2_with_crlf_accepted() {
    let mut msg2 = MSG2.as_bytes().to_vec();
    msg2.extend_from_slice(b"\r\n");
    VECTOR_SERVER.clone().verify(&msg2, pass_ok).unwrap();
}

#[test]
fn wrong_password_rejected() {
    let (client, msg1) = ClientExchange::start_with_secret("user1", &hex(X_DH));
    let msg = parse_server_message(SERVER_MSG.as_bytes()).unwrap();
    let msg2 = client.finish(&msg, &Secret::from("pass2")).unwrap();
    assert_eq!(
        VECTOR_SERVER.clone().verify(&msg2, pass_ok),
        Err(SaslError::WrongPassword)
    );
    assert_eq!(msg1, MSG1.as_bytes());
}

#[test]
fn tampered_msg2_rejected() {
    let mut raw = b64d(MSG2.as_bytes());
    // Flip a bit in the first block: the MAC/J head decrypts differently.
    raw[0] ^= 0x01;
    let err = VECTOR_SERVER
        .clone()
        .verify(b64_encode(&raw).as_bytes(), pass_ok)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SaslError::BadMac | SaslError::BadPadding | SaslError::PasswordTooLong | SaslError::MalformedResponse(_)
        ),
        "{err:?}"
    );
    // Flip the last byte: the padding breaks.
    let mut raw = b64d(MSG2.as_bytes());
    let last = raw.len() - 1;
    raw[last] ^= 0x80;
    assert!(
        VECTOR_SERVER
            .clone()
            .verify(b64_encode(&raw).as_bytes(), pass_ok)
            .is_err()
    );
    assert!(matches!(
        VECTOR_SERVER.clone().verify(b"AAAA", pass_ok),
        Err(SaslError::MalformedResponse(_))
    ));
}

#[test]
fn tampered_server_message_rejected() {
    let raw = b64d(SERVER_MSG.as_bytes());
    // last byte of s, and a byte inside Y
    for pos in [raw.len() - 1, 4 + 431 + 4 + 60] {
        let mut bad = raw.clone();
        bad[pos] ^= 0x01;
        let (client, _) = ClientExchange::start_with_secret("user1", &hex(X_DH));
        let msg = parse_server_message(b64_encode(&bad).as_bytes()).unwrap();
        assert_eq!(
            client.finish(&msg, &Secret::from("pass1")),
            Err(SaslError::BadSignature)
        );
    }
}

#[test]
fn server_message_sanity_checks() {
    let raw = b64d(SERVER_MSG.as_bytes());
    // pklength < 240
    let mut bad = raw.clone();
    bad[..4].copy_from_slice(&239u32.to_be_bytes());
    assert_eq!(
        parse_server_message(b64_encode(&bad).as_bytes()),
        Err(SaslError::HostKeyTooShort(239))
    );
    // siglength < 59: rebuild the signature with unpadded tiny r and s
    let head = 4 + 431 + 4 + 128 + 4;
    let mut bad = raw[..head].to_vec();
    let mut sig = Vec::new();
    put_string(&mut sig, SSH_DSS);
    put_bn(&mut sig, &BigUint::from(1u32));
    put_bn(&mut sig, &BigUint::from(1u32));
    put_string(&mut bad, &sig);
    assert_eq!(
        parse_server_message(b64_encode(&bad).as_bytes()),
        Err(SaslError::SignatureTooShort(21))
    );
    // trailing garbage, truncation, status line, wrong key type
    let mut bad = raw.clone();
    bad.push(0);
    assert!(matches!(
        parse_server_message(b64_encode(&bad).as_bytes()),
        Err(SaslError::MalformedServerMessage(_))
    ));
    assert!(matches!(
        parse_server_message(b64_encode(&raw[..raw.len() - 1]).as_bytes()),
        Err(SaslError::MalformedServerMessage(_))
    ));
    assert!(matches!(
        parse_server_message(b"300 Authentication failed\r\n"),
        Err(SaslError::Refused(_))
    ));
    let mut bad = raw.clone();
    bad[8 + 6] = b'x'; // "ssh-dsx"
    assert_eq!(
        parse_server_message(b64_encode(&bad).as_bytes()),
        Err(SaslError::BadHostKey("key type is not ssh-dss"))
    );
    // trailing CRLF is fine
    let mut ok = SERVER_MSG.as_bytes().to_vec();
    ok.extend_from_slice(b"\r\n");
    assert!(parse_server_message(&ok).is_ok());
}

#[test]
fn bad_dh_values_rejected() {
    let key = vector_key();
    for v in [BigUint::one(), &*DH_P - 1u32, DH_P.clone()] {
        let mut msg1 = Vec::new();
        put_u32(&mut msg1, 0);
        put_string(&mut msg1, b"user1");
        put_bn(&mut msg1, &v);
        let r = ServerExchange::respond(b64_encode(&msg1).as_bytes(), &key, &mut rand::thread_rng());
        assert!(
            matches!(r, Err(SaslError::BadDhValue | SaslError::OutOfBounds(_))),
            "{r:?}"
        );
    }
}

#[test]
fn msg1_checks() {
    let key = vector_key();
    let mut rng = rand::thread_rng();
    let build = |authz: &[u8], user: &[u8]| {
        let mut m = Vec::new();
        put_string(&mut m, authz);
        put_string(&mut m, user);
        put_bn(&mut m, &BigUint::from(12345u32));
        b64_encode(&m).into_bytes()
    };
    assert_eq!(
        ServerExchange::respond(&build(b"", b""), &key, &mut rng).unwrap_err(),
        SaslError::BadUserLength
    );
    assert_eq!(
        ServerExchange::respond(&build(b"", &[b'a'; 254]), &key, &mut rng).unwrap_err(),
        SaslError::BadUserLength
    );
    assert!(matches!(
        ServerExchange::respond(&build(b"x", b"u"), &key, &mut rng),
        Err(SaslError::MalformedResponse(_))
    ));
    assert!(ServerExchange::respond(&build(b"u", b"u"), &key, &mut rng).is_ok());
}

#[test]
fn known_hosts() {
    let key = vector_key();
    let mut other = key.public().clone();
    other.y = other.g.modpow(&BigUint::from(12345u32), &other.p);
    let host = "broker.example.net";
    let line = known_hosts_line(host, key.public());
    let other_line = known_hosts_line(host, &other);

    assert_eq!(check_known_hosts("", host, key.public()), Trust::Unknown);
    assert_eq!(
        check_known_hosts(&line, "broker.example.net:3653", key.public()),
        Trust::Unknown
    );
    assert_eq!(check_known_hosts(&line, host, key.public()), Trust::Known);
    assert_eq!(check_known_hosts(&other_line, host, key.public()), Trust::Mismatch);
    // the last line for the host decides
    let both = format!("{other_line}{line}");
    assert_eq!(check_known_hosts(&both, host, key.public()), Trust::Known);
    let both = format!("{line}{other_line}");
    assert_eq!(check_known_hosts(&both, host, key.public()), Trust::Mismatch);
    // malformed lines and other key types are skipped
    let text =
        format!("{line}{host} ssh-dss AAAA!!!\n{host} ssh-rsa AAAA\n{host}\n\n{host} ssh-dss AAAAB3NzaC1kc3M=\n");
    assert_eq!(check_known_hosts(&text, host, key.public()), Trust::Known);
    assert_eq!(PublicHostKey::from_blob(&key.public().blob()).unwrap(), *key.public());
}

#[test]
fn key_text_round_trip() {
    let key = vector_key();
    let text = key.to_text();
    assert!(text.starts_with('#'));
    let back = HostKeyPair::from_text(&text).unwrap();
    assert_eq!(back.public(), key.public());
    assert_eq!(back.x, key.x);
    assert!(!format!("{key:?}").contains(X_DSA));

    let no_y: String = text
        .lines()
        .filter(|l| !l.starts_with("y "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(HostKeyPair::from_text(&no_y).is_ok());
    let wrong_y = text.replace(&format!("y {Y_DSA}"), "y 1234");
    assert_eq!(
        HostKeyPair::from_text(&wrong_y).unwrap_err(),
        SaslError::BadKeyFile("y does not match x")
    );
    let no_x: String = text
        .lines()
        .filter(|l| !l.starts_with("x "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(HostKeyPair::from_text(&no_x).is_err());
    assert!(HostKeyPair::from_text("p zz\n").is_err());
    assert!(HostKeyPair::from_text("k 12\n").is_err());
    assert!(HostKeyPair::from_text(&format!("{text}p 5\n")).is_err());
    let x_too_big = text.replace(&format!("x {X_DSA}"), &format!("x {Q}"));
    assert!(HostKeyPair::from_text(&x_too_big).is_err());
}

#[test]
fn round_trip_with_generated_key() {
    let mut rng = rand::thread_rng();
    let key = HostKeyPair::generate(&mut rng).unwrap();
    assert_eq!(key.public().p.bits(), 1024);
    assert_eq!(key.public().q.bits(), 160);
    assert!(key.public().blob().len() >= MIN_PKLENGTH as usize);
    let key = HostKeyPair::from_text(&key.to_text()).unwrap();

    for (user, pass) in [("alice", "s3cret"), ("bob", ""), ("c", &"p".repeat(128)[..])] {
        let (client, msg1) = ClientExchange::start(user, &mut rng);
        assert_eq!(msg1_len(&msg1), Some(msg1.len()));
        let (server, claimed, smsg) = ServerExchange::respond(&msg1, &key, &mut rng).unwrap();
        assert_eq!(claimed, user);
        assert_eq!(server.user(), user);
        let msg = parse_server_message(&smsg).unwrap();
        assert_eq!(
            check_known_hosts(&known_hosts_line("h", key.public()), "h", &msg.host_key.public),
            Trust::Known
        );
        let msg2 = client.finish(&msg, &Secret::from(pass)).unwrap();
        assert_eq!(server.msg2_complete(&msg2), Some(msg2.len()));
        server.verify(&msg2, |u, p| u == user && p.expose() == pass).unwrap();
    }
}

proptest! {
    #[test]
    fn parse_server_message_never_panics(data in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = parse_server_message(&data);
        let _ = parse_server_message(b64_encode(&data).as_bytes());
        let _ = msg1_len(&data);
        let _ = msg1_len(b64_encode(&data).as_bytes());
    }

    #[test]
    fn mutated_server_message_never_panics(pos in 0usize..634, val in any::<u8>()) {
        let mut raw = b64d(SERVER_MSG.as_bytes());
        raw[pos] = val;
        if let Ok(msg) = parse_server_message(b64_encode(&raw).as_bytes()) {
            let (client, _) = ClientExchange::start_with_secret("user1", &hex(X_DH));
            let _ = client.finish(&msg, &Secret::from("pass1"));
        }
    }

    #[test]
    fn respond_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let key = vector_key();
        let mut rng = rand::thread_rng();
        let _ = ServerExchange::respond(&data, &key, &mut rng);
        let _ = ServerExchange::respond(b64_encode(&data).as_bytes(), &key, &mut rng);
    }

    #[test]
    fn verify_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let server = &*VECTOR_SERVER;
        let _ = server.msg2_complete(&data);
        let _ = server.msg2_complete(b64_encode(&data).as_bytes());
        let _ = server.clone().verify(&data, pass_ok);
        prop_assert!(server.clone().verify(b64_encode(&data).as_bytes(), pass_ok).is_err());
    }
}
