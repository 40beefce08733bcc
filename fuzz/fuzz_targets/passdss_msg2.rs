//! PASSDSS-3DES-1's second client message as the broker frames, decrypts and checks it
//! (docs/tsp-wire.md §3.5 steps 8–10, §11.4), behind a real exchange: the §11.4 vector's
//! msg1 answered with its DH secret and DSA nonce, so that the session keys are the vector's
//! cs-key, cs-iv and cs-int and the target can encrypt what it likes under them.
//! `passdss_server` covers msg1 and the raw base64 of msg2; this target reaches the checks
//! behind the decryption.
//!
//! Input: a flag byte, then the plaintext J (normally `ssecmask ‖ 3 bytes ‖ string(password)`).
//! Flags: 1 = append the HMAC the client computes over `Hbuf ‖ J[0..4]`; 2 = no PKCS#7
//! padding (zeros up to a whole block); 4 = send the rest as msg2's base64 text as it is,
//! without encrypting it; 8 = end the text with CRLF.
//!
//! Invariants: nothing panics; the broker accepts msg2 exactly when it is J for `pass1`
//! (ssecmask 0x01, any client buffer size, a length of 5) followed by the right HMAC and
//! PKCS#7 padding, and the
//! password it hands to the account check is then `pass1` for `user1`; for a well-formed
//! message (a length field of at most 128 that matches J, the HMAC, PKCS#7) the TCP framing
//! `msg2_complete` finds exactly the base64 text's end, with or without CRLF after it, and
//! waits on every shorter prefix; and it never claims more bytes than it was given.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockModeEncrypt as _, KeyIvInit as _};
use des::TdesEde3;
use hmac::{Hmac, KeyInit as _, Mac as _};
use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{HOST_KEY, PASSWORD, USER};
use num_bigint::BigUint;
use sha1::Sha1;
use tsp_proto::sasl::passdss::ServerExchange;

// §11.4: the client's msg1, the broker's secrets and its message, the derived keys and msg2.
const MSG1: &str = "AAAAAAAAAAV1c2VyMQAAAIBP2KT7vXeLqrhjNL+MCe2B3zE0wsK7T6y4D2v3cCFx4QyOx61zyYcF/YXERMA0UmCiit9fkvO+k/+X368mPYXyALuP9xk+m7rcJ+zKSNq+CK3tRjqbGDAT9KztvYtrJHe1ylNAfwAB1abSyhN9L/75/ZhiHvrbxso7KmNCcoOjQA==";
const Y_DH: &str = "ab5a5c30becbe261e1fec1ba0f36ce7b036261134c9f5aa65a2c9f2f0ceca1f6";
const K_DSA: &str = "6230323d2cbb5ebaa6690af0448c17b2b3a280eb";
const SERVER_MSG: &str = "AAABrwAAAAdzc2gtZHNzAAAAgJK79k3dTecX0NXocOxQaduackyX24T886RD7UZNYSkgU3uOqjc4ALDTk79sr5SaULBfvpJrA1JpzRssYNt9K6d5PAka4cyG5nfmz0h9CSmPpjpZgxUKFwHQ+Q7bpsXNGFMEpfpmIDGsboehuGHNClmviOaTdLFbhy86w7725QndAAAAFI1rH1fix76eZHHbfcZiyqutT3KdAAAAgBp6ckCPwd9fP0ZPLzwE1rDJaqJyYXvEycozq0eBDTWRCDfxBMPyKXtA4c3smZeGWZjsGzRgIH5L+Efh0ngsR6mfwLPCNX5a2DdAA22kUTBDcx4Km3IGD8r9ClQ4xur6SCAH853yOPVzzD3FozR5hErZFHLmPFi8zvfycYTny6hIAAAAgEkxmdY0TjxYYA5q2e1iCnsUV/xgSn5TvlzCGAOvUlD4+oyC4pP3CzW37npy1fOW1C64q6VYiw8QiAODnrHjlFWc5lc+Up+1azbQRuFGyeYV9alfLJzK11K4CmIuyTXhOo0bcaTj2afVGV3U70du+slZ7c9MWoISxr0UuOdb5/PbAAAAgO2Lu2K9fcV8waXrY51qfCTNTHGAOxNc6jULCKQqhDQcb1FW5yGYuKu1Jxl9tQNNk8ZzHr0m3ye2F+djoLrSinmMm5gRaDQVEiz0uQHkNp3IDWTHczb72BpF+b4dISLHxbaeSlsJTDnQcH/znNcySP6AeWa7Kqb1p/cWMJ8kcf8ZAQAAAAAAADsAAAAHc3NoLWRzcwAAABQvC0eglbmfzAH1ZvyUZb0quWdcggAAABQyIox7pJ97bnHlg+bmWnvN4ZWSHg==";
const CS_KEY: &str = "07654ab9a04e63ad90ae3d217c79f81480d7cd87f48e5483";
const CS_IV: &str = "7ee03d581d43fdc1";
const CS_INT: &str = "b27ec5ea866ca69693677c3f8c00083f4ac5f05d";
const MSG2: &str = "ZsYKlGeCmcPSUXUrhURNEQiErfoW/DMS1bFaxUQhAFeVSCe2JBzz4A==";
/// The broker's signature: `u32 siglength` (59) ends the message, after Hbuf's part of it.
const SIG_TAIL: usize = 4 + 59;

const MAC: u8 = 1;
const RAW: u8 = 2;
const TEXT: u8 = 4;
const CRLF: u8 = 8;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex literal"))
        .collect()
}

struct Vector {
    exchange: ServerExchange,
    hbuf: Vec<u8>,
    key: [u8; 24],
    iv: [u8; 8],
    int: Vec<u8>,
}

static VECTOR: LazyLock<Vector> = LazyLock::new(|| {
    let y = BigUint::parse_bytes(Y_DH.as_bytes(), 16).expect("y");
    let k = BigUint::parse_bytes(K_DSA.as_bytes(), 16).expect("k");
    let (exchange, user, reply) =
        ServerExchange::respond_with(MSG1.as_bytes(), &HOST_KEY, &y, &k).expect("the §11.4 msg1 is answered");
    assert_eq!(user, USER);
    assert_eq!(
        reply,
        SERVER_MSG.as_bytes(),
        "the broker reproduces the §11.4 server message"
    );
    let server = STANDARD.decode(SERVER_MSG).expect("base64");
    let hbuf = [
        STANDARD.decode(MSG1).expect("base64"),
        server[..server.len() - SIG_TAIL].to_vec(),
    ]
    .concat();
    let v = Vector {
        exchange,
        hbuf,
        key: hex(CS_KEY).try_into().expect("24 bytes"),
        iv: hex(CS_IV).try_into().expect("8 bytes"),
        int: hex(CS_INT),
    };
    assert_eq!(
        encrypt(&v, &canonical_j(), MAC),
        MSG2.as_bytes(),
        "the target reproduces the §11.4 msg2"
    );
    v
});

/// J for `pass1` as gogoc sends it: ssecmask 0x01, client max buffer 0, the password.
fn canonical_j() -> Vec<u8> {
    [
        &[1, 0, 0, 0][..],
        &(PASSWORD.len() as u32).to_be_bytes(),
        PASSWORD.as_bytes(),
    ]
    .concat()
}

/// msg2's base64 text for plaintext `j`, as the flags say.
fn encrypt(v: &Vector, j: &[u8], flags: u8) -> Vec<u8> {
    let mut plain = j.to_vec();
    if flags & MAC != 0 {
        let mut mac = <Hmac<Sha1>>::new_from_slice(&v.int).expect("any key length");
        mac.update(&v.hbuf);
        mac.update(&j[..j.len().min(4)]);
        plain.extend_from_slice(&mac.finalize().into_bytes());
    }
    let cbc = cbc::Encryptor::<TdesEde3>::new(&v.key.into(), &v.iv.into());
    let ct = if flags & RAW != 0 {
        plain.resize(plain.len().div_ceil(8) * 8, 0);
        cbc.encrypt_padded_vec::<NoPadding>(&plain)
    } else {
        cbc.encrypt_padded_vec::<Pkcs7>(&plain)
    };
    STANDARD.encode(ct).into_bytes()
}

/// J as the broker's parser wants it: a length of at most 128 that covers the rest exactly.
fn well_formed(j: &[u8]) -> bool {
    j.len() >= 8 && {
        let n = u32::from_be_bytes(j[4..8].try_into().expect("4 bytes")) as usize;
        n <= 128 && j.len() == 8 + n
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, j)) = data.split_first() else {
        return;
    };
    let v = &*VECTOR;
    let text = if flags & TEXT != 0 {
        j.to_vec()
    } else {
        encrypt(v, j, flags)
    };

    let framed = v.exchange.msg2_complete(&text);
    if let Some(n) = framed {
        assert!(n <= text.len(), "msg2_complete {n} for {} bytes", text.len());
    }
    let whole = flags & (TEXT | RAW | MAC) == MAC && well_formed(j);
    if whole {
        assert_eq!(framed, Some(text.len()), "a whole msg2 is not found whole");
        assert_eq!(
            v.exchange.msg2_complete(&[&text[..], b"\r\n"].concat()),
            Some(text.len())
        );
        for cut in 0..text.len() {
            assert_eq!(
                v.exchange.msg2_complete(&text[..cut]),
                None,
                "gave up on a prefix of {cut} bytes"
            );
        }
    }

    let mut sent = text;
    if flags & CRLF != 0 {
        sent.extend_from_slice(b"\r\n");
    }
    let mut seen = None;
    let verdict = v.exchange.clone().verify(&sent, |user, password| {
        seen = Some((user.to_owned(), password.expose().to_owned()));
        user == USER && password.expose() == PASSWORD
    });
    // J[1..4] is the client's maximum buffer, meaningless without a security layer: any value.
    let canonical = canonical_j();
    let right = flags & (TEXT | RAW | MAC) == MAC
        && j.len() == canonical.len()
        && j[0] == canonical[0]
        && j[4..] == canonical[4..];
    if flags & TEXT == 0 {
        assert_eq!(verdict.is_ok(), right, "{verdict:?}");
    }
    if verdict.is_ok() {
        assert_eq!(seen, Some((USER.to_owned(), PASSWORD.to_owned())));
    }
});
