//! Message framing: status lines, CRLF lines and `Content-length` frames (docs/tsp-wire.md §1.2, §10.2–3).
//!
//! The client writes `Content-length: N\r\n` + XML (N counts the XML only); the broker answers
//! `Content-length: M\r\n` + status line + XML (M counts both). Every function here works on a
//! buffer that may hold less than a message (TCP split) or more (TCP coalescing): `Ok(None)`
//! means "need more bytes", `Ok(Some((msg, consumed)))` hands out one message.

use super::status::StatusCode;
use super::types::MAX_MESSAGE;

/// The exact, case-sensitive prefix gogoc requires on framed broker replies.
pub const CONTENT_LENGTH: &[u8] = b"Content-length:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("broker sent a status line without a numeric code: {0:?}")]
    NonNumericStatus(String),
    #[error("broker sent a line longer than {MAX_MESSAGE} bytes")]
    LineTooLong,
    #[error("expected a `Content-length:` header, got {0:?}")]
    MissingContentLength(String),
    #[error("`Content-length` value is not a number: {0:?}")]
    BadContentLength(String),
    #[error("`Content-length: {0}` exceeds the {MAX_MESSAGE}-byte limit")]
    ContentLengthTooLarge(u64),
    #[error("message is shorter than its `Content-length: {declared}` (got {got} bytes)")]
    Truncated { declared: usize, got: usize },
    #[error("message is longer than its `Content-length: {declared}` ({got} bytes)")]
    Overlong { declared: usize, got: usize },
}

/// A status line split into its code and free text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine<'a> {
    pub status: StatusCode,
    pub text: &'a str,
}

/// Printable preview of untrusted bytes for error messages (bounded, lossy).
pub fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(60)];
    let mut s: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

/// True if the buffer starts like a status line (a digit at byte 0).
pub fn looks_like_status(buf: &[u8]) -> bool {
    buf.first().is_some_and(u8::is_ascii_digit)
}

/// Parses `<digits> <text>` (the line may still carry its CRLF). The real client only does
/// `atoi`; we are stricter and refuse a line that does not start with a number.
pub fn parse_status_line(line: &[u8]) -> Result<StatusLine<'_>, FrameError> {
    let line = trim_crlf(line);
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 {
        return Err(FrameError::NonNumericStatus(preview(line)));
    }
    let code: u32 = std::str::from_utf8(&line[..digits])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| FrameError::NonNumericStatus(preview(line)))?;
    let rest = &line[digits..];
    if !(rest.is_empty() || rest[0] == b' ') {
        return Err(FrameError::NonNumericStatus(preview(line)));
    }
    let text = std::str::from_utf8(rest).unwrap_or("").trim();
    Ok(StatusLine {
        status: StatusCode::from_code(code),
        text,
    })
}

/// A status line as the broker writes it: `200 Success\r\n`.
pub fn status_line(status: StatusCode) -> Vec<u8> {
    format!("{} {}\r\n", status.code(), status.wire_text()).into_bytes()
}

/// [`status_line`] with words after the status text saying why (`530 Server too busy: …`);
/// line breaks and control characters in `reason` become spaces.
pub fn status_line_because(status: StatusCode, reason: Option<&str>) -> Vec<u8> {
    match reason {
        None => status_line(status),
        Some(r) => {
            let r: String = r.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            format!("{} {}: {r}\r\n", status.code(), status.wire_text()).into_bytes()
        }
    }
}

/// Removes one trailing `\r\n` or `\n` (and a stray NUL after it, which TCP streams carry).
pub fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\0").unwrap_or(line);
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Takes one `\n`-terminated line off the front of `buf` (the returned line keeps its CRLF).
pub fn take_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i < MAX_MESSAGE => Ok(Some((&buf[..=i], i + 1))),
        Some(_) => Err(FrameError::LineTooLong),
        None if buf.len() >= MAX_MESSAGE => Err(FrameError::LineTooLong),
        None => Ok(None),
    }
}

/// `Content-length: N\r\n` + body, as the client frames `create` and `accept`.
pub fn frame_request(xml: &str) -> Vec<u8> {
    let mut out = format!("Content-length: {}\r\n", xml.len()).into_bytes();
    out.extend_from_slice(xml.as_bytes());
    out
}

/// `Content-length: M\r\n` + status line + XML, as the broker frames replies to `create`.
pub fn frame_reply(status: StatusCode, xml: &str) -> Vec<u8> {
    frame_reply_because(status, None, xml)
}

/// [`frame_reply`] with words after the status text saying why (`303 Unsupported tunnel
/// type: …`); line breaks and control characters in `reason` become spaces.
pub fn frame_reply_because(status: StatusCode, reason: Option<&str>, xml: &str) -> Vec<u8> {
    let mut body = status_line_because(status, reason);
    body.extend_from_slice(xml.as_bytes());
    let mut out = format!("Content-length: {}\r\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Splits a `Content-length` frame off the front of `buf`.
///
/// `exact_header` selects the client's view of broker replies (the 15-byte prefix must match
/// case-sensitively, as gogoc's memcmp does); the broker reading client requests accepts any
/// case. Returns the body and the number of bytes consumed.
pub fn take_framed(buf: &[u8], exact_header: bool) -> Result<Option<(&[u8], usize)>, FrameError> {
    let prefix_len = CONTENT_LENGTH.len();
    let have = buf.len().min(prefix_len);
    let prefix_ok = if exact_header {
        buf[..have] == CONTENT_LENGTH[..have]
    } else {
        buf[..have].eq_ignore_ascii_case(&CONTENT_LENGTH[..have])
    };
    if !prefix_ok {
        return Err(FrameError::MissingContentLength(preview(buf)));
    }
    let Some((header, header_len)) = take_line(buf)? else {
        return Ok(None);
    };
    let value = std::str::from_utf8(trim_crlf(&header[prefix_len..]))
        .map_err(|_| FrameError::BadContentLength(preview(header)))?
        .trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::BadContentLength(preview(value.as_bytes())));
    }
    let declared: u64 = value
        .parse()
        .map_err(|_| FrameError::BadContentLength(preview(value.as_bytes())))?;
    if declared > MAX_MESSAGE as u64 {
        return Err(FrameError::ContentLengthTooLarge(declared));
    }
    let declared = declared as usize;
    let rest = &buf[header_len..];
    if rest.len() < declared {
        return Ok(None);
    }
    Ok(Some((&rest[..declared], header_len + declared)))
}

/// Like [`take_framed`] for a transport that delivers whole messages (one UDP datagram):
/// the frame must be complete and nothing may follow it.
pub fn parse_framed_datagram(msg: &[u8], exact_header: bool) -> Result<&[u8], FrameError> {
    match take_framed(msg, exact_header)? {
        Some((body, used)) if used == msg.len() => Ok(body),
        Some((body, used)) => Err(FrameError::Overlong {
            declared: body.len(),
            got: body.len() + msg.len() - used,
        }),
        None => {
            let (declared, got) = declared_and_present(msg);
            Err(FrameError::Truncated { declared, got })
        }
    }
}

fn declared_and_present(msg: &[u8]) -> (usize, usize) {
    match take_line(msg) {
        Ok(Some((header, used))) => {
            let v = std::str::from_utf8(trim_crlf(&header[CONTENT_LENGTH.len().min(header.len())..]))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            (v, msg.len() - used)
        }
        _ => (0, 0),
    }
}

/// Splits the body of a framed broker reply into its status line and the XML after it.
pub fn split_status(body: &[u8]) -> Result<(StatusLine<'_>, &[u8]), FrameError> {
    match take_line(body)? {
        Some((line, used)) => Ok((parse_status_line(line)?, &body[used..])),
        None => Ok((parse_status_line(body)?, &[])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let s = parse_status_line(b"200 Success\r\n").unwrap();
        assert_eq!(s.status, StatusCode::Success);
        assert_eq!(s.text, "Success");
        assert_eq!(
            parse_status_line(b"1200 Redirection").unwrap().status,
            StatusCode::Redirect(1200)
        );
        assert_eq!(
            parse_status_line(b"300\r\n").unwrap().status,
            StatusCode::AuthenticationFailed
        );
        assert!(matches!(
            parse_status_line(b"OK fine\r\n"),
            Err(FrameError::NonNumericStatus(_))
        ));
        assert!(matches!(
            parse_status_line(b"20O Success\r\n"),
            Err(FrameError::NonNumericStatus(_))
        ));
        assert!(parse_status_line(b"99999999999 x").is_err());
        assert_eq!(status_line(StatusCode::Success), b"200 Success\r\n");
    }

    #[test]
    fn accept_frame_is_35_bytes() {
        let accept = frame_request("<tunnel action=\"accept\"></tunnel>\r\n");
        assert_eq!(accept, b"Content-length: 35\r\n<tunnel action=\"accept\"></tunnel>\r\n");
    }

    #[test]
    fn framed_split_and_coalesced() {
        let reply = frame_reply(StatusCode::Success, "<tunnel/>\r\n");
        assert!(reply.starts_with(b"Content-length: 24\r\n200 Success\r\n"));
        for cut in 0..reply.len() {
            assert_eq!(take_framed(&reply[..cut], true), Ok(None), "cut at {cut}");
        }
        let mut two = reply.clone();
        two.extend_from_slice(&reply);
        let (body, used) = take_framed(&two, true).unwrap().unwrap();
        assert_eq!(used, reply.len());
        assert_eq!(body, b"200 Success\r\n<tunnel/>\r\n");
        let (st, xml) = split_status(body).unwrap();
        assert_eq!(st.status, StatusCode::Success);
        assert_eq!(xml, b"<tunnel/>\r\n");
    }

    #[test]
    fn framed_errors() {
        assert!(matches!(
            take_framed(b"content-length: 3\r\nabc", true),
            Err(FrameError::MissingContentLength(_))
        ));
        assert!(take_framed(b"content-length: 3\r\nabc", false).unwrap().is_some());
        assert!(matches!(
            take_framed(b"Content-length: 4097\r\n", true),
            Err(FrameError::ContentLengthTooLarge(4097))
        ));
        assert!(matches!(
            take_framed(b"Content-length: -1\r\n", true),
            Err(FrameError::BadContentLength(_))
        ));
        assert!(matches!(
            take_framed(b"Content-length: 99999999999999999999999\r\n", true),
            Err(FrameError::BadContentLength(_))
        ));
        assert!(matches!(
            take_framed(b"310 Server side error\r\n", true),
            Err(FrameError::MissingContentLength(_))
        ));
        assert_eq!(
            parse_framed_datagram(b"Content-length: 10\r\nabc", true),
            Err(FrameError::Truncated { declared: 10, got: 3 })
        );
        assert_eq!(
            parse_framed_datagram(b"Content-length: 1\r\nabc", true),
            Err(FrameError::Overlong { declared: 1, got: 3 })
        );
        let long = vec![b'x'; MAX_MESSAGE + 1];
        assert_eq!(take_line(&long), Err(FrameError::LineTooLong));
    }
}
