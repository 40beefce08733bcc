//! PLAIN (docs/tsp-wire.md §3.3): RFC 4616 layout sent raw, not base64:
//! `NUL user NUL password CR LF` with an empty authorization identity.

use super::{MAX_MESSAGE, MAX_PASSWORD, MAX_USER, SaslError};
use crate::secret::Secret;

/// The credential message a client sends after `AUTHENTICATE PLAIN\r\n\0`.
///
/// Configuration validation is expected to have rejected NUL, CR and LF in either value.
pub fn client_message(user: &str, password: &Secret) -> Vec<u8> {
    let pass = password.expose().as_bytes();
    let mut msg = Vec::with_capacity(user.len() + pass.len() + 4);
    msg.push(0);
    msg.extend_from_slice(user.as_bytes());
    msg.push(0);
    msg.extend_from_slice(pass);
    msg.extend_from_slice(b"\r\n");
    msg
}

/// For a TCP server: the length of the credential message at the start of `buf` (through its
/// CRLF) once it has fully arrived. When more than [`MAX_MESSAGE`] bytes arrived without a
/// CRLF, returns all of them so that [`parse_client_message`] reports the error.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(pos) => Some(pos + 2),
        None if buf.len() > MAX_MESSAGE => Some(buf.len()),
        None => None,
    }
}

/// Server side: parses `authzid NUL user NUL password CRLF` into the user name and password.
///
/// The message ends at the first CRLF (bytes after it are not examined); a missing CRLF is
/// tolerated because a UDP datagram carries exactly one message. The authorization identity
/// must be empty (gogoc) or equal to the user name.
pub fn parse_client_message(msg: &[u8]) -> Result<(String, Secret), SaslError> {
    if msg.len() > MAX_MESSAGE {
        return Err(SaslError::TooLarge(msg.len()));
    }
    let body = match msg.windows(2).position(|w| w == b"\r\n") {
        Some(pos) => msg.get(..pos).unwrap_or_default(),
        None => msg,
    };
    let mut parts = body.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::MalformedResponse(
            "PLAIN credentials must be three NUL-separated fields",
        ));
    };
    if user.is_empty() || user.len() > MAX_USER {
        return Err(SaslError::BadUserLength);
    }
    if pass.len() > MAX_PASSWORD {
        return Err(SaslError::PasswordTooLong);
    }
    if !authz.is_empty() && authz != user {
        return Err(SaslError::MalformedResponse(
            "PLAIN authorization identity differs from the user name",
        ));
    }
    let user = std::str::from_utf8(user).map_err(|_| SaslError::NotUtf8("user name"))?;
    let pass = std::str::from_utf8(pass).map_err(|_| SaslError::NotUtf8("password"))?;
    Ok((user.to_owned(), Secret::new(pass)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vector_user1() {
        let msg = client_message("user1", &Secret::from("pass1"));
        assert_eq!(
            msg,
            [
                0x00, 0x75, 0x73, 0x65, 0x72, 0x31, 0x00, 0x70, 0x61, 0x73, 0x73, 0x31, 0x0d, 0x0a
            ]
        );
        let (user, pass) = parse_client_message(&msg).unwrap();
        assert_eq!(user, "user1");
        assert_eq!(pass.expose(), "pass1");
        assert_eq!(message_len(&msg), Some(14));
        assert_eq!(message_len(&msg[..13]), None);
    }

    #[test]
    fn missing_crlf_tolerated() {
        let (user, pass) = parse_client_message(b"\0u\0p").unwrap();
        assert_eq!((user.as_str(), pass.expose()), ("u", "p"));
        // empty password is a (wrong) password, not a syntax error
        let (_, pass) = parse_client_message(b"\0u\0\r\n").unwrap();
        assert!(pass.is_empty());
    }

    #[test]
    fn rejects_bad_messages() {
        assert!(parse_client_message(b"u\0p\r\n").is_err());
        assert!(parse_client_message(b"\0u\0p\0x\r\n").is_err());
        assert_eq!(parse_client_message(b"\0\0p\r\n"), Err(SaslError::BadUserLength));
        assert!(parse_client_message(b"other\0u\0p\r\n").is_err());
        assert!(parse_client_message(b"u\0u\0p\r\n").is_ok());
        let long_user = [b"\0".as_slice(), &[b'a'; 254], b"\0p\r\n"].concat();
        assert_eq!(parse_client_message(&long_user), Err(SaslError::BadUserLength));
        let long_pass = [b"\0u\0".as_slice(), &[b'a'; 129], b"\r\n"].concat();
        assert_eq!(parse_client_message(&long_pass), Err(SaslError::PasswordTooLong));
        assert_eq!(
            parse_client_message(b"\0u\0\xff\r\n"),
            Err(SaslError::NotUtf8("password"))
        );
        let big = vec![b'a'; MAX_MESSAGE + 1];
        assert!(matches!(parse_client_message(&big), Err(SaslError::TooLarge(_))));
        assert_eq!(message_len(&big), Some(big.len()));
    }

    #[test]
    fn errors_never_show_password() {
        let long_pass = [b"\0u\0".as_slice(), &[b'z'; 129], b"\r\n"].concat();
        let err = parse_client_message(&long_pass).unwrap_err().to_string();
        assert!(!err.contains("zzz"));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_client_message(&data);
            let _ = message_len(&data);
        }

        #[test]
        fn round_trip(user in "[^\0\r\n]{1,60}", pass in "[^\0\r\n]{0,40}") {
            prop_assume!(user.len() <= MAX_USER && pass.len() <= MAX_PASSWORD);
            let msg = client_message(&user, &Secret::new(pass.clone()));
            let (u, p) = parse_client_message(&msg).unwrap();
            prop_assert_eq!(u, user);
            prop_assert_eq!(p.expose(), pass.as_str());
        }
    }
}
