//! DIGEST-MD5 as gogoc speaks it (docs/tsp-wire.md §3.4), client and server side.
//!
//! Differences from a textbook RFC 2831 client that matter for interop: the digest-uri is
//! `tsp/` + the configured server string verbatim, the response directives come in a fixed
//! order without spaces, `charset` is echoed unquoted, `nc` is always `00000001`, and the
//! rspauth arrives as its own base64 line before `200 Success`.
//!
//! Directive parsing is quote-aware (a quoted value may contain commas and `\`-escapes); gogoc
//! just splits on commas, which gives the same result for every challenge a real broker sends.

use base64::Engine as _;
use md5::{Digest as _, Md5};
use rand::{CryptoRng, RngCore};

use super::{MAX_USER, SaslError, b64_encode, ct_eq, decode_wire, hex_lower, status_reply};
use crate::secret::Secret;

/// Nonce count: gogoc authenticates once per challenge.
const NC: &str = "00000001";
/// The only quality of protection TSP uses (no security layer).
const QOP_AUTH: &str = "auth";
/// A2 "method" for the client's response; the rspauth uses an empty one.
const METHOD_AUTHENTICATE: &str = "AUTHENTICATE";

/// Longest challenge `nonce` accepted. With [`MAX_REALM`], [`MAX_CHARSET`], a [`MAX_USER`]
/// user name and the longest server string the configuration allows (1025 bytes), the
/// response stays within the 4096-byte message limit even when every character needs an
/// escape, so the client never sends what the broker (or it) would refuse. Real brokers send
/// a few dozen bytes.
pub const MAX_NONCE: usize = 400;
/// Longest challenge `realm` accepted (a DNS name at most, in practice).
pub const MAX_REALM: usize = 253;
/// Longest challenge `charset` accepted (`utf-8` in practice).
pub const MAX_CHARSET: usize = 32;

/// The directives of a broker challenge that the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`; `None` when the broker sent none (the empty realm is then used).
    pub realm: Option<String>,
    /// `nonce`, always present and non-empty.
    pub nonce: String,
    /// `qop` as received (guaranteed by [`parse_challenge`] to offer `auth` if present).
    pub qop: Option<String>,
    /// `algorithm` as received (md5-sess is assumed whatever it says, like gogoc).
    pub algorithm: Option<String>,
    /// `charset`, echoed unquoted in the response.
    pub charset: Option<String>,
}

/// Parses the broker's challenge: base64 text as received, CRLF allowed. A TSP status line
/// (e.g. `300 …`) in its place yields [`SaslError::Refused`].
pub fn parse_challenge(line: &[u8]) -> Result<Challenge, SaslError> {
    let raw = decode_wire(line)?;
    let text = String::from_utf8(raw).map_err(|_| SaslError::NotUtf8("DIGEST-MD5 challenge"))?;
    let dirs = parse_directives(&text).map_err(SaslError::MalformedChallenge)?;
    let nonce = find(&dirs, "nonce").ok_or(SaslError::MalformedChallenge("no nonce"))?;
    if nonce.is_empty() {
        return Err(SaslError::MalformedChallenge("empty nonce"));
    }
    if nonce.len() > MAX_NONCE {
        return Err(SaslError::MalformedChallenge("nonce longer than 400 bytes"));
    }
    if find(&dirs, "realm").is_some_and(|r| r.len() > MAX_REALM) {
        return Err(SaslError::MalformedChallenge("realm longer than 253 bytes"));
    }
    if find(&dirs, "charset").is_some_and(|c| c.len() > MAX_CHARSET) {
        return Err(SaslError::MalformedChallenge("charset longer than 32 bytes"));
    }
    let qop = find(&dirs, "qop");
    let offers_auth = |q: &str| q.split(',').any(|v| v.trim().eq_ignore_ascii_case(QOP_AUTH));
    if qop.is_some_and(|q| !offers_auth(q)) {
        return Err(SaslError::UnsupportedQop);
    }
    Ok(Challenge {
        realm: find(&dirs, "realm").map(str::to_owned),
        nonce: nonce.to_owned(),
        qop: qop.map(str::to_owned),
        algorithm: find(&dirs, "algorithm").map(str::to_owned),
        charset: find(&dirs, "charset").map(str::to_owned),
    })
}

/// Builds the client's response line (base64 + CRLF) and the rspauth value the broker must
/// answer with (32 lower-case hex digits, for [`check_rspauth`]).
///
/// `server` is the configured server string verbatim (with `:port` or `[v6]` brackets if the
/// user wrote them): the digest-uri is `tsp/<server>`. `cnonce` is gogoc's decimal Unix time;
/// any string without `"` works. When the challenge has no `charset`, the directive is left
/// out (gogoc would print `charset=(null)`).
pub fn client_response(ch: &Challenge, user: &str, password: &Secret, server: &str, cnonce: &str) -> (Vec<u8>, String) {
    let realm = ch.realm.as_deref().unwrap_or("");
    let digest_uri = format!("tsp/{server}");
    let h = ha1(user, realm, password);
    let response = digest(&h, &ch.nonce, cnonce, NC, QOP_AUTH, METHOD_AUTHENTICATE, &digest_uri);
    let rspauth = digest(&h, &ch.nonce, cnonce, NC, QOP_AUTH, "", &digest_uri);
    let mut text = String::new();
    if let Some(cs) = &ch.charset {
        text.push_str("charset=");
        text.push_str(cs);
        text.push(',');
    }
    text.push_str(&format!(
        "username=\"{}\",realm=\"{}\",nonce=\"{}\",nc={NC},cnonce=\"{}\",digest-uri=\"{}\",response={response},qop={QOP_AUTH}",
        escape(user),
        escape(realm),
        escape(&ch.nonce),
        escape(cnonce),
        escape(&digest_uri),
    ));
    let mut line = b64_encode(text.as_bytes()).into_bytes();
    line.extend_from_slice(b"\r\n");
    (line, rspauth)
}

/// Checks the broker's `rspauth` line (base64 of `rspauth=<hex>`, CRLF allowed) against the
/// value [`client_response`] returned.
pub fn check_rspauth(line: &[u8], expected: &str) -> Result<(), SaslError> {
    // A success status without rspauth would crash gogoc; report it as what is missing.
    if status_reply(line).is_some_and(|s| s.starts_with('2')) {
        return Err(SaslError::MissingRspauth);
    }
    let raw = decode_wire(line)?;
    let text = String::from_utf8_lossy(&raw);
    let dirs = parse_directives(&text).map_err(|_| SaslError::MissingRspauth)?;
    let got = find(&dirs, "rspauth").ok_or(SaslError::MissingRspauth)?;
    if ct_eq(
        got.to_ascii_lowercase().as_bytes(),
        expected.to_ascii_lowercase().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(SaslError::WrongRspauth)
    }
}

/// `MD5(user ":" realm ":" password)`: the md5-sess inner hash, which is what the broker's
/// account file stores (as hex) instead of the password.
pub fn ha1(user: &str, realm: &str, password: &Secret) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.expose().as_bytes());
    h.finalize().into()
}

/// The md5-sess digest (RFC 2831 §2.1.2.1 without authzid), lower-case hex:
/// `HEX(MD5(HEX(MD5(ha1 ":" nonce ":" cnonce)) ":" nonce ":" nc ":" cnonce ":" qop ":"
/// HEX(MD5(a2_method ":" digest_uri))))`. The client response uses `a2_method`
/// `"AUTHENTICATE"`, the rspauth an empty one.
pub fn digest(
    ha1: &[u8; 16],
    nonce: &str,
    cnonce: &str,
    nc: &str,
    qop: &str,
    a2_method: &str,
    digest_uri: &str,
) -> String {
    let a1 = md5_parts(&[ha1, b":", nonce.as_bytes(), b":", cnonce.as_bytes()]);
    let a2 = md5_parts(&[a2_method.as_bytes(), b":", digest_uri.as_bytes()]);
    let kd = md5_parts(&[
        hex_lower(&a1).as_bytes(),
        b":",
        nonce.as_bytes(),
        b":",
        nc.as_bytes(),
        b":",
        cnonce.as_bytes(),
        b":",
        qop.as_bytes(),
        b":",
        hex_lower(&a2).as_bytes(),
    ]);
    hex_lower(&kd)
}

fn md5_parts(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A fresh nonce for [`server_challenge`]: 16 hex digits (64 random bits). Kept short because
/// gogoc copies challenge values into fixed-size buffers of unknown size.
pub fn generate_nonce(rng: &mut (impl RngCore + CryptoRng)) -> String {
    let mut bytes = [0u8; 8];
    rng.fill_bytes(&mut bytes);
    hex_lower(&bytes)
}

/// The broker's challenge line: base64 of
/// `realm="<realm>",nonce="<nonce>",qop="auth",algorithm=md5-sess,charset=utf8` + CRLF.
pub fn server_challenge(realm: &str, nonce: &str) -> Vec<u8> {
    let text = format!(
        "realm=\"{}\",nonce=\"{}\",qop=\"auth\",algorithm=md5-sess,charset=utf8",
        escape(realm),
        escape(nonce)
    );
    let mut line = b64_encode(text.as_bytes()).into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}

/// The client's response as the broker parses it (quoted values unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// Account name, 1..=253 bytes.
    pub username: String,
    /// Realm quoted by the client (empty if absent).
    pub realm: String,
    /// The nonce the client answers.
    pub nonce: String,
    /// Client nonce.
    pub cnonce: String,
    /// Nonce count as sent (8 hex digits).
    pub nc: String,
    /// digest-uri as sent (`tsp/<client's configured server>`).
    pub digest_uri: String,
    /// The 32-hex response value.
    pub response: String,
    /// qop as sent.
    pub qop: Option<String>,
    /// charset as sent (gogoc may send `(null)`).
    pub charset: Option<String>,
}

/// Server side: parses the client's response line (base64 + CRLF).
pub fn parse_response(line: &[u8]) -> Result<ClientResponse, SaslError> {
    let raw = decode_wire(line)?;
    let text = String::from_utf8(raw).map_err(|_| SaslError::NotUtf8("DIGEST-MD5 response"))?;
    let dirs = parse_directives(&text).map_err(SaslError::MalformedResponse)?;
    let need = |name: &'static str, what: &'static str| {
        find(&dirs, name)
            .map(str::to_owned)
            .ok_or(SaslError::MalformedResponse(what))
    };
    let username = need("username", "DIGEST-MD5 response has no username")?;
    if username.is_empty() || username.len() > MAX_USER {
        return Err(SaslError::BadUserLength);
    }
    Ok(ClientResponse {
        username,
        realm: find(&dirs, "realm").unwrap_or("").to_owned(),
        nonce: need("nonce", "DIGEST-MD5 response has no nonce")?,
        cnonce: need("cnonce", "DIGEST-MD5 response has no cnonce")?,
        nc: need("nc", "DIGEST-MD5 response has no nc")?,
        digest_uri: need("digest-uri", "DIGEST-MD5 response has no digest-uri")?,
        response: need("response", "DIGEST-MD5 response has no response value")?,
        qop: find(&dirs, "qop").map(str::to_owned),
        charset: find(&dirs, "charset").map(str::to_owned),
    })
}

/// Server side: checks a parsed response against the account's stored [`ha1`] and the nonce
/// and realm this session issued, and returns the rspauth line to send (base64 + CRLF), which
/// must go out as its own message before `200 Success`.
///
/// The digest-uri is taken from the client as sent (it names the client's configured server,
/// which the broker cannot predict).
pub fn verify_response(
    resp: &ClientResponse,
    stored_ha1: &[u8; 16],
    expected_nonce: &str,
    expected_realm: &str,
) -> Result<Vec<u8>, SaslError> {
    if resp.nonce != expected_nonce {
        return Err(SaslError::NonceMismatch);
    }
    if resp.realm != expected_realm {
        return Err(SaslError::RealmMismatch);
    }
    // Eight hex digits exactly: `from_str_radix` alone would also take `+0000001`.
    let nc_ok = resp.nc.len() == 8
        && resp.nc.bytes().all(|b| b.is_ascii_hexdigit())
        && u32::from_str_radix(&resp.nc, 16) == Ok(1);
    if !nc_ok {
        return Err(SaslError::BadNonceCount);
    }
    // qop is hashed as sent; absent means "auth" (RFC 2831).
    let qop = resp.qop.as_deref().unwrap_or(QOP_AUTH);
    if !qop.eq_ignore_ascii_case(QOP_AUTH) {
        return Err(SaslError::MalformedResponse(
            "DIGEST-MD5 response selects a qop other than auth",
        ));
    }
    let expected = digest(
        stored_ha1,
        &resp.nonce,
        &resp.cnonce,
        &resp.nc,
        qop,
        METHOD_AUTHENTICATE,
        &resp.digest_uri,
    );
    if !ct_eq(resp.response.to_ascii_lowercase().as_bytes(), expected.as_bytes()) {
        return Err(SaslError::WrongPassword);
    }
    let rspauth = digest(
        stored_ha1,
        &resp.nonce,
        &resp.cnonce,
        &resp.nc,
        qop,
        "",
        &resp.digest_uri,
    );
    let mut line = base64::engine::general_purpose::STANDARD
        .encode(format!("rspauth={rspauth}"))
        .into_bytes();
    line.extend_from_slice(b"\r\n");
    Ok(line)
}

/// Backslash-escapes `\` and `"` for a quoted-string.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// First value of directive `name` (names are case-insensitive per RFC 2831).
fn find<'a>(dirs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    dirs.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits `name=value` directives separated by commas (and CR/LF, which gogoc also treats as
/// separators). Values may be quoted with `\`-escapes. Pieces without `=` are skipped, as
/// gogoc does.
fn parse_directives(text: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut dirs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|c| matches!(c, ',' | ' ' | '\t' | '\r' | '\n'))
        {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(dirs);
        }
        let mut name = String::new();
        let mut has_value = false;
        while let Some(&c) = chars.peek() {
            if matches!(c, ',' | '\r' | '\n') {
                break;
            }
            chars.next();
            if c == '=' {
                has_value = true;
                break;
            }
            name.push(c);
        }
        if !has_value {
            continue;
        }
        while chars.peek().is_some_and(|c| matches!(c, ' ' | '\t')) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => {
                        if let Some(e) = chars.next() {
                            value.push(e);
                        }
                    }
                    _ => value.push(c),
                }
            }
            if !closed {
                return Err("unterminated quoted value");
            }
        } else {
            while let Some(&c) = chars.peek() {
                if matches!(c, ',' | '\r' | '\n') {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value.truncate(value.trim_end().len());
        }
        dirs.push((name.trim().to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MAX_MESSAGE;
    use proptest::prelude::*;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.encode(s).into_bytes()
    }

    /// Fuzzing found a challenge with a ~3 KB nonce whose response (4,162 bytes) the client's
    /// own parser, and so the broker, refuses: such a challenge is refused up front.
    #[test]
    fn oversized_challenge_fields_are_refused() {
        let long = "n".repeat(3000);
        assert_eq!(
            parse_challenge(&b64(&format!("nonce=\"{long}\",qop=\"auth\""))),
            Err(SaslError::MalformedChallenge("nonce longer than 400 bytes"))
        );
        let realm = "r".repeat(MAX_REALM + 1);
        assert_eq!(
            parse_challenge(&b64(&format!("realm=\"{realm}\",nonce=\"x\""))),
            Err(SaslError::MalformedChallenge("realm longer than 253 bytes"))
        );
        let charset = "c".repeat(MAX_CHARSET + 1);
        assert_eq!(
            parse_challenge(&b64(&format!("nonce=\"x\",charset={charset}"))),
            Err(SaslError::MalformedChallenge("charset longer than 32 bytes"))
        );
    }

    /// The limits hold for the worst case: every field at its longest and made of characters
    /// that need an escape; the response still fits a message and parses on the broker side.
    #[test]
    fn largest_accepted_challenge_gives_a_response_that_fits() {
        let ch = parse_challenge(&b64(&format!(
            "realm=\"{}\",nonce=\"{}\",charset={},qop=\"auth\"",
            "\\\"".repeat(MAX_REALM),
            "\\\"".repeat(MAX_NONCE),
            "u".repeat(MAX_CHARSET)
        )))
        .expect("largest challenge parses");
        assert_eq!(ch.nonce.len(), MAX_NONCE);
        let user = "\"".repeat(MAX_USER);
        let server = "s".repeat(1025);
        let (line, _) = client_response(&ch, &user, &Secret::new("pw"), &server, "1113923787");
        assert!(line.len() <= MAX_MESSAGE, "{} bytes", line.len());
        let resp = parse_response(&line).expect("the broker reads it");
        assert_eq!(resp.nonce, ch.nonce);
    }

    #[test]
    fn rfc2831_imap_example() {
        let h = ha1("chris", "elwood.innosoft.com", &Secret::from("secret"));
        let uri = "imap/elwood.innosoft.com";
        let (n, c) = ("OA6MG9tEQGm2hh", "OA6MHXh6VqTrRk");
        assert_eq!(
            digest(&h, n, c, NC, "auth", "AUTHENTICATE", uri),
            "d388dad90d4bbd760a152321f2143af7"
        );
        assert_eq!(
            digest(&h, n, c, NC, "auth", "", uri),
            "ea40f60335c427b5527b84dbabcdfffd"
        );
    }

    #[test]
    fn rfc2831_acap_example() {
        let h = ha1("chris", "elwood.innosoft.com", &Secret::from("secret"));
        let uri = "acap/elwood.innosoft.com";
        let (n, c) = ("OA9BSXrbuRhWay", "OA9BSuZWMSpW8m");
        assert_eq!(
            digest(&h, n, c, NC, "auth", "AUTHENTICATE", uri),
            "6084c6db3fede7352c551284490fd0fc"
        );
        assert_eq!(
            digest(&h, n, c, NC, "auth", "", uri),
            "2f0b3d7c3c2e486600ef710726aa2eae"
        );
    }

    const CHALLENGE_B64: &str =
        "cmVhbG09ImhleG9zIixub25jZT0iMTExMzkwODk2OCIscW9wPSJhdXRoIixhbGdvcml0aG09bWQ1LXNlc3MsY2hhcnNldD11dGY4";
    const RESPONSE_B64: &str = "Y2hhcnNldD11dGY4LHVzZXJuYW1lPSJ1c2VyMSIscmVhbG09ImhleG9zIixub25jZT0iMTExMzkwODk2OCIsbmM9MDAwMDAwMDEsY25vbmNlPSIxMTEzOTIzNzg3IixkaWdlc3QtdXJpPSJ0c3AvYnJva2VyLmZyZWVuZXQ2Lm5ldCIscmVzcG9uc2U9ZTdkNDFiYTY1Yzk0ZWY2M2ViMTU4MTdhODQ4MjgxZGEscW9wPWF1dGg=";
    const RSPAUTH_B64: &str = "cnNwYXV0aD00MWYzMzg0YmNkODI0ZDExODk3NDNiNTBlM2JjYjc4Ng==";

    #[test]
    fn tsp_vector_11_2() {
        let challenge = server_challenge("hexos", "1113908968");
        assert_eq!(challenge, format!("{CHALLENGE_B64}\r\n").into_bytes());

        let ch = parse_challenge(&challenge).unwrap();
        assert_eq!(
            ch,
            Challenge {
                realm: Some("hexos".into()),
                nonce: "1113908968".into(),
                qop: Some("auth".into()),
                algorithm: Some("md5-sess".into()),
                charset: Some("utf8".into()),
            }
        );
        let (line, rspauth) = client_response(
            &ch,
            "user1",
            &Secret::from("pass1"),
            "broker.freenet6.net",
            "1113923787",
        );
        assert_eq!(line, format!("{RESPONSE_B64}\r\n").into_bytes());
        assert_eq!(rspauth, "41f3384bcd824d1189743b50e3bcb786");

        let resp = parse_response(&line).unwrap();
        assert_eq!(resp.username, "user1");
        assert_eq!(resp.digest_uri, "tsp/broker.freenet6.net");
        assert_eq!(resp.response, "e7d41ba65c94ef63eb15817a848281da");
        assert_eq!(resp.charset.as_deref(), Some("utf8"));
        let stored = ha1("user1", "hexos", &Secret::from("pass1"));
        let reply = verify_response(&resp, &stored, "1113908968", "hexos").unwrap();
        assert_eq!(reply, format!("{RSPAUTH_B64}\r\n").into_bytes());
        check_rspauth(&reply, &rspauth).unwrap();
    }

    #[test]
    fn unquoted_challenge_accepted() {
        let ch = parse_challenge(
            b"cmVhbG09aGV4b3Msbm9uY2U9MTExMzkwODk2OCxxb3A9YXV0aCxhbGdvcml0aG09bWQ1LXNlc3MsY2hhcnNldD11dGY4\r\n",
        )
        .unwrap();
        assert_eq!(ch.realm.as_deref(), Some("hexos"));
        assert_eq!(ch.nonce, "1113908968");
        assert_eq!(ch.qop.as_deref(), Some("auth"));
        assert_eq!(ch.charset.as_deref(), Some("utf8"));
    }

    #[test]
    fn challenge_errors() {
        assert_eq!(
            parse_challenge(&b64("realm=\"x\",qop=auth")),
            Err(SaslError::MalformedChallenge("no nonce"))
        );
        assert_eq!(
            parse_challenge(&b64("nonce=\"1\",qop=\"auth-int,auth-conf\"")),
            Err(SaslError::UnsupportedQop)
        );
        assert!(parse_challenge(&b64("nonce=\"1\",qop=\"auth,auth-int\"")).is_ok());
        assert_eq!(
            parse_challenge(&b64("nonce=\"1")),
            Err(SaslError::MalformedChallenge("unterminated quoted value"))
        );
        assert_eq!(parse_challenge(b"not base64!\r\n"), Err(SaslError::BadBase64));
        assert!(matches!(
            parse_challenge(b"300 Authentication failed\r\n"),
            Err(SaslError::Refused(s)) if s == "300 Authentication failed"
        ));
    }

    #[test]
    fn no_charset_no_realm() {
        let ch = parse_challenge(&b64("nonce=\"abc\"")).unwrap();
        let (line, _) = client_response(&ch, "u", &Secret::from("p"), "h", "1");
        let text = decode_wire(&line).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("username=\"u\",realm=\"\",nonce=\"abc\","));
    }

    #[test]
    fn rspauth_errors() {
        let expected = "41f3384bcd824d1189743b50e3bcb786";
        check_rspauth(RSPAUTH_B64.as_bytes(), expected).unwrap();
        assert_eq!(
            check_rspauth(&b64("rspauth=41f3384bcd824d1189743b50e3bcb787"), expected),
            Err(SaslError::WrongRspauth)
        );
        assert_eq!(check_rspauth(&b64("foo=bar"), expected), Err(SaslError::MissingRspauth));
        assert_eq!(
            check_rspauth(b"200 Success\r\n", expected),
            Err(SaslError::MissingRspauth)
        );
        assert!(matches!(
            check_rspauth(b"300 Authentication failed\r\n", expected),
            Err(SaslError::Refused(_))
        ));
        assert!(
            SaslError::WrongRspauth
                .to_string()
                .contains("could not prove it knows the password")
        );
    }

    #[test]
    fn wrong_password_rejected() {
        let ch = parse_challenge(&server_challenge("hexos", "n1")).unwrap();
        let (line, _) = client_response(&ch, "user1", &Secret::from("wrong"), "srv", "42");
        let resp = parse_response(&line).unwrap();
        let stored = ha1("user1", "hexos", &Secret::from("pass1"));
        assert_eq!(
            verify_response(&resp, &stored, "n1", "hexos"),
            Err(SaslError::WrongPassword)
        );
        let (line, _) = client_response(&ch, "user1", &Secret::from("pass1"), "srv", "42");
        let resp = parse_response(&line).unwrap();
        assert_eq!(
            verify_response(&resp, &stored, "n2", "hexos"),
            Err(SaslError::NonceMismatch)
        );
        assert_eq!(
            verify_response(&resp, &stored, "n1", "other"),
            Err(SaslError::RealmMismatch)
        );
        let mut bad_nc = resp.clone();
        bad_nc.nc = "00000002".into();
        assert_eq!(
            verify_response(&bad_nc, &stored, "n1", "hexos"),
            Err(SaslError::BadNonceCount)
        );
        assert!(verify_response(&resp, &stored, "n1", "hexos").is_ok());
    }

    /// Found by fuzz/digest_response: a sign before the digits passed as nonce count 1.
    #[test]
    fn nonce_count_is_eight_hex_digits() {
        let stored = ha1("user1", "hexos", &Secret::from("pass1"));
        let ch = parse_challenge(&server_challenge("hexos", "n1")).unwrap();
        let (line, _) = client_response(&ch, "user1", &Secret::from("pass1"), "srv", "42");
        let good = parse_response(&line).unwrap();
        for nc in ["+0000001", "0000001 ", "0x000001"] {
            // The response is right for this nc: only the nc check can refuse it.
            let resp = ClientResponse {
                nc: nc.into(),
                response: digest(&stored, "n1", "42", nc, "auth", "AUTHENTICATE", &good.digest_uri),
                ..good.clone()
            };
            assert_eq!(
                verify_response(&resp, &stored, "n1", "hexos"),
                Err(SaslError::BadNonceCount),
                "{nc:?}"
            );
        }
    }

    #[test]
    fn response_errors() {
        assert_eq!(
            parse_response(&b64("nonce=\"1\"")),
            Err(SaslError::MalformedResponse("DIGEST-MD5 response has no username"))
        );
        let long = format!(
            "username=\"{}\",nonce=\"1\",cnonce=\"2\",nc=00000001,digest-uri=\"tsp/x\",response=00",
            "a".repeat(254)
        );
        assert_eq!(parse_response(&b64(&long)), Err(SaslError::BadUserLength));
    }

    #[test]
    fn nonce_is_hex() {
        let mut rng = rand::thread_rng();
        let n = generate_nonce(&mut rng);
        assert_eq!(n.len(), 16);
        assert!(n.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_challenge(&data);
            let _ = parse_response(&data);
            let _ = check_rspauth(&data, "00");
        }

        #[test]
        fn parsers_never_panic_on_directive_text(text in "[a-z=\",\\\\ \r\n]{0,200}") {
            let line = b64(&text);
            let _ = parse_challenge(&line);
            let _ = parse_response(&line);
        }

        #[test]
        fn round_trip(
            user in "[ -~]{1,40}",
            pass in "[ -~]{0,40}",
            realm in "[ -~]{0,20}",
            server in "[!-~]{1,30}",
            nonce in "[0-9a-f]{8,16}",
            cnonce in "[0-9]{1,12}",
        ) {
            let stored = ha1(&user, &realm, &Secret::new(pass.clone()));
            let ch = parse_challenge(&server_challenge(&realm, &nonce)).unwrap();
            let (line, rspauth) =
                client_response(&ch, &user, &Secret::new(pass), &server, &cnonce);
            let resp = parse_response(&line).unwrap();
            prop_assert_eq!(&resp.username, &user);
            prop_assert_eq!(&resp.realm, &realm);
            let reply = verify_response(&resp, &stored, &nonce, &realm).unwrap();
            prop_assert!(check_rspauth(&reply, &rspauth).is_ok());
        }
    }
}
