//! SASL mechanisms of TSP (RFC 5572) as spoken by gogoCLIENT 1.2, for both the client and the
//! bundled broker (see `docs/tsp-wire.md` §3).
//!
//! Everything here is sans-I/O: functions take the bytes received and return the bytes to send.
//! Randomness is injected by the caller, so the exchanges can be replayed from test vectors.
//!
//! * ANONYMOUS has no payload: only [`Mechanism::authenticate_line`] is needed.
//! * [`plain`]: `\0user\0pass\r\n`, not base64.
//! * [`digest_md5`]: RFC 2831 style with the TSP details (digest-uri `tsp/<server>`).
//! * [`passdss`]: PASSDSS-3DES-1 (DH group 2, DSA host key, 3DES-CBC).

pub mod digest_md5;
pub mod passdss;
pub mod plain;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Largest authentication message accepted from the wire, in bytes (before base64 decoding).
pub const MAX_MESSAGE: usize = 4096;
/// Largest user name accepted from the wire, in bytes.
pub const MAX_USER: usize = 253;
/// Largest password accepted from the wire, in bytes.
pub const MAX_PASSWORD: usize = 128;

/// A SASL mechanism offered in the TSP `CAPABILITY` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// No credentials.
    Anonymous,
    /// Clear-text user name and password.
    Plain,
    /// RFC 2831 style challenge/response.
    DigestMd5,
    /// Diffie-Hellman + DSA host key + 3DES-encrypted password.
    PassDss3Des1,
}

impl Mechanism {
    /// The name used in `AUTH=` capability tokens and the `AUTHENTICATE` command.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::Anonymous => "ANONYMOUS",
            Self::Plain => "PLAIN",
            Self::DigestMd5 => "DIGEST-MD5",
            Self::PassDss3Des1 => "PASSDSS-3DES-1",
        }
    }

    /// Parses a mechanism name; case-insensitive like gogoc's `AUTH=` comparison.
    pub fn from_wire(name: &str) -> Option<Self> {
        [Self::Anonymous, Self::Plain, Self::DigestMd5, Self::PassDss3Des1]
            .into_iter()
            .find(|m| m.wire_name().eq_ignore_ascii_case(name))
    }

    /// The exact `AUTHENTICATE <NAME>\r\n\0` bytes gogoc sends; the trailing NUL is part of
    /// the wire format (gogoc sends `sizeof` of the string, §10 item 1).
    pub fn authenticate_line(self) -> &'static [u8] {
        match self {
            Self::Anonymous => b"AUTHENTICATE ANONYMOUS\r\n\0",
            Self::Plain => b"AUTHENTICATE PLAIN\r\n\0",
            Self::DigestMd5 => b"AUTHENTICATE DIGEST-MD5\r\n\0",
            Self::PassDss3Des1 => b"AUTHENTICATE PASSDSS-3DES-1\r\n\0",
        }
    }

    /// The capability bit gogoc uses for this mechanism (the "any" mask is 0xF0).
    pub fn cap_bit(self) -> u8 {
        match self {
            Self::PassDss3Des1 => 0x80,
            Self::DigestMd5 => 0x40,
            Self::Plain => 0x20,
            Self::Anonymous => 0x10,
        }
    }
}

/// Why an authentication step failed. No message ever contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Input above [`MAX_MESSAGE`].
    #[error("authentication message too large ({0} bytes; at most 4096 are accepted)")]
    TooLarge(usize),
    /// The base64 text could not be decoded.
    #[error("authentication message is not valid base64")]
    BadBase64,
    /// A TSP status line (e.g. `300 Authentication failed`) arrived instead of SASL data.
    #[error("the broker refused the authentication: {0}")]
    Refused(String),
    /// The DIGEST-MD5 challenge lacks something or is not `name=value` text.
    #[error("malformed DIGEST-MD5 challenge from the broker: {0}")]
    MalformedChallenge(&'static str),
    /// The DIGEST-MD5 challenge offers only integrity/confidentiality layers.
    #[error("the broker's DIGEST-MD5 challenge does not offer qop \"auth\"")]
    UnsupportedQop,
    /// The broker's final DIGEST-MD5 message has no `rspauth`.
    #[error("the broker's DIGEST-MD5 reply carries no rspauth value")]
    MissingRspauth,
    /// `rspauth` differs from the value computed from our password.
    #[error("the broker could not prove it knows the password (wrong rspauth): wrong password or an impostor")]
    WrongRspauth,
    /// A client message (PLAIN, DIGEST-MD5 response, PASSDSS message) is malformed.
    #[error("malformed authentication message from the client: {0}")]
    MalformedResponse(&'static str),
    /// The PASSDSS server message is malformed.
    #[error("malformed PASSDSS message from the broker: {0}")]
    MalformedServerMessage(&'static str),
    /// A length or number exceeds the bounds this implementation accepts.
    #[error("{0} is out of bounds")]
    OutOfBounds(&'static str),
    /// A user name from the wire is longer than [`MAX_USER`] or empty.
    #[error("user name is empty or longer than 253 bytes")]
    BadUserLength,
    /// A password from the wire is longer than [`MAX_PASSWORD`].
    #[error("password is longer than 128 bytes")]
    PasswordTooLong,
    /// Text that must be UTF-8 is not.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// PASSDSS: `pklength` below the 240 gogoc requires.
    #[error("the broker's host key is too short (pklength {0}, at least 240 required)")]
    HostKeyTooShort(u32),
    /// PASSDSS: `siglength` below the 59 gogoc requires.
    #[error("the broker's signature is too short (siglength {0}, at least 59 required)")]
    SignatureTooShort(u32),
    /// PASSDSS: the host-key blob is not a usable `ssh-dss` key.
    #[error("the broker's host key is invalid: {0}")]
    BadHostKey(&'static str),
    /// PASSDSS: the DSA signature over the exchange hash does not verify.
    #[error("the broker's signature does not verify: the message was altered or the broker is an impostor")]
    BadSignature,
    /// PASSDSS: a Diffie-Hellman public value is outside `(1, p-1)`.
    #[error("Diffie-Hellman value out of range")]
    BadDhValue,
    /// PASSDSS: the decrypted client message has invalid PKCS#7 padding.
    #[error("client message decrypts with bad padding (wrong keys or corrupted message)")]
    BadPadding,
    /// PASSDSS: the HMAC over the exchange does not match.
    #[error("client message integrity check (HMAC) failed")]
    BadMac,
    /// The client selected a security layer we did not offer.
    #[error("client selected an unsupported security layer")]
    BadSecurityLayer,
    /// DIGEST-MD5 server: the response quotes a nonce we did not issue.
    #[error("client response quotes a different nonce (stale or replayed)")]
    NonceMismatch,
    /// DIGEST-MD5 server: the response quotes a different realm.
    #[error("client response quotes a different realm")]
    RealmMismatch,
    /// DIGEST-MD5 server: nonce count other than 1.
    #[error("client response has an unexpected nonce count")]
    BadNonceCount,
    /// Server side: the credentials do not match. Send the client the same status as for
    /// [`SaslError::UnknownUser`] so user names cannot be probed.
    #[error("wrong password")]
    WrongPassword,
    /// Server side: no such account (for the caller's account lookup).
    #[error("unknown user")]
    UnknownUser,
    /// A stored host-key file could not be read.
    #[error("invalid host key file: {0}")]
    BadKeyFile(&'static str),
}

/// Base64 decoder shared by all mechanisms: standard alphabet, padding optional (peers differ).
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Standard padded base64 without line breaks (what gogoc and TSPS emit).
pub(crate) fn b64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Checks the size bound, reports a TSP status line, strips the line terminator (CRLF, and the
/// NUL/space a sloppy peer may leave) and decodes base64.
pub(crate) fn decode_wire(input: &[u8]) -> Result<Vec<u8>, SaslError> {
    if input.len() > MAX_MESSAGE {
        return Err(SaslError::TooLarge(input.len()));
    }
    if let Some(status) = status_reply(input) {
        return Err(SaslError::Refused(status));
    }
    let text = trim_end(input);
    B64_LENIENT.decode(text).map_err(|_| SaslError::BadBase64)
}

/// Removes trailing CR, LF, NUL, space and tab.
pub(crate) fn trim_end(input: &[u8]) -> &[u8] {
    let end = input
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n' | b'\0' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    input.get(..end).unwrap_or_default()
}

/// If `input` is a TSP status line (`NNN text`) rather than SASL data, returns it printable and
/// shortened for an error message. Base64 never contains a space, and no SASL message here is
/// three characters long, so the test is unambiguous.
pub(crate) fn status_reply(input: &[u8]) -> Option<String> {
    let line = trim_end(input);
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match line.get(3) {
        None | Some(b' ') => {}
        Some(_) => return None,
    }
    let line_end = line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    let shown: String = line
        .iter()
        .take(line_end.min(160))
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    Some(shown)
}

/// Lower-case hex, as DIGEST-MD5 and the text formats here use.
pub(crate) fn hex_lower(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(data.len() * 2);
    for b in data {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Equality whose running time does not depend on where the inputs differ (lengths are public).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticate_lines() {
        let lens: Vec<usize> = [
            Mechanism::Anonymous,
            Mechanism::Plain,
            Mechanism::DigestMd5,
            Mechanism::PassDss3Des1,
        ]
        .iter()
        .map(|m| m.authenticate_line().len())
        .collect();
        assert_eq!(lens, [25, 21, 26, 30]);
        for m in [
            Mechanism::Anonymous,
            Mechanism::Plain,
            Mechanism::DigestMd5,
            Mechanism::PassDss3Des1,
        ] {
            let line = m.authenticate_line();
            assert!(line.ends_with(b"\r\n\0"));
            assert_eq!(line, format!("AUTHENTICATE {}\r\n\0", m.wire_name()).as_bytes());
            assert_eq!(Mechanism::from_wire(&m.wire_name().to_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::from_wire("CRAM-MD5"), None);
        assert_eq!(Mechanism::PassDss3Des1.cap_bit(), 0x80);
        assert_eq!(Mechanism::DigestMd5.cap_bit(), 0x40);
        assert_eq!(Mechanism::Plain.cap_bit(), 0x20);
        assert_eq!(Mechanism::Anonymous.cap_bit(), 0x10);
    }

    #[test]
    fn status_lines_are_recognised() {
        assert_eq!(
            status_reply(b"300 Authentication failed\r\n").as_deref(),
            Some("300 Authentication failed")
        );
        assert_eq!(status_reply(b"cmVhbG0="), None);
        assert_eq!(status_reply(b"3000"), None);
        assert!(matches!(
            decode_wire(b"300 Authentication failed\r\n"),
            Err(SaslError::Refused(_))
        ));
        assert_eq!(decode_wire(b"YWJj\r\n"), Ok(b"abc".to_vec()));
        assert_eq!(decode_wire(b"YWI\r\n"), Ok(b"ab".to_vec()));
        assert_eq!(decode_wire(b"Y$Jj"), Err(SaslError::BadBase64));
        assert_eq!(
            decode_wire(&[b'A'; MAX_MESSAGE + 1]),
            Err(SaslError::TooLarge(MAX_MESSAGE + 1))
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(hex_lower(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(trim_end(b"ab\r\n\0"), b"ab");
        assert_eq!(trim_end(b"\r\n"), b"");
    }
}
