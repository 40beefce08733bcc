//! Property tests for the stream framing and the CAPABILITY line (spec §1.2, §1.4, §1.7,
//! §10.2–3, §11.3): what a TCP peer can throw at the parsers, and how `Content-length`
//! frames survive being split across reads or coalesced into one.

use std::ops::Range;

use proptest::prelude::*;
use tsp_proto::StatusCode;
use tsp_proto::caps::{self, Capabilities};
use tsp_proto::client::{Expect, take_reply};
use tsp_proto::frame::{self, FrameError};
use tsp_proto::types::MAX_MESSAGE;

const EXPECTS: [Expect; 4] = [Expect::Line, Expect::PassDssServerMessage, Expect::Framed, Expect::Ack];

const TUNNEL_BITS: [u8; 3] = [caps::TUNNEL_V6V4, caps::TUNNEL_V6UDPV4, caps::TUNNEL_V4V6];
const AUTH_BITS: [u8; 4] = [
    caps::AUTH_PASSDSS,
    caps::AUTH_DIGEST_MD5,
    caps::AUTH_PLAIN,
    caps::AUTH_ANONYMOUS,
];

// ---------------------------------------------------------------------------------------------
// Strategies

/// Bytes built from pieces of real TSP traffic, so the parsers get past their first check
/// far more often than with uniform noise.
fn wireish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"Content-length: ".to_vec()),
        Just(b"content-LENGTH:".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(b" ".to_vec()),
        Just(b"=".to_vec()),
        Just(b"200 Success".to_vec()),
        Just(b"300 Authentication failed".to_vec()),
        Just(b"1200 Redirection\r\n".to_vec()),
        Just(b"<tunnel action=\"info\">".to_vec()),
        Just(b"</tunnel>".to_vec()),
        Just(b"CAPABILITY ".to_vec()),
        Just(b"TUNNEL=V6V4".to_vec()),
        Just(b"TUNNEL=v6udpv4".to_vec()),
        Just(b"AUTH=PLAIN".to_vec()),
        Just(b"AUTH=passdss-3des-1".to_vec()),
        Just(b"AAAB".to_vec()),
        "[0-9]{1,12}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/=]{0,64}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// Arbitrary bytes: noise, TSP-like fragments, and long runs around the 4096-byte limit.
fn any_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..=5000),
        4 => wireish(),
        1 => (4090usize..=4100, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1 => (4070usize..=4100, prop::bool::ANY).prop_map(|(n, exact)| {
            let mut v = if exact { b"Content-length: 4096\r\n".to_vec() } else { b"1200 Redirection\r\n".to_vec() };
            v.resize(n, b'x');
            v
        }),
    ]
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cap_utf8(mut s: String, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// A message body of at most 4096 bytes: XML-ish ASCII with line breaks, any Unicode, text
/// that itself looks like framing, or a run of exactly the maximum size.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~\r\n\t]{0,600}",
        2 => prop::collection::vec(any::<char>(), 0..=1500).prop_map(|cs| cs.into_iter().collect()),
        1 => "(Content-length: [0-9]{1,5}\r\n|200 Success\r\n|</tunnel>\r\n|[a-z<>/ ]{0,20}){0,30}",
        1 => (0usize..=MAX_MESSAGE).prop_map(|n| "x".repeat(n)),
        1 => Just("y".repeat(MAX_MESSAGE)),
    ]
    .prop_map(|s: String| cap_utf8(s, MAX_MESSAGE))
}

/// A status code the way a broker may write one: known codes and anything below 10^9.
fn status_code() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        prop::sample::select(vec![200u32, 300, 301, 302, 303, 310, 500, 530, 1200]),
        0u32..1_000_000_000,
    ]
    .prop_map(StatusCode::from_code)
}

/// A framed broker reply (status line + XML) whose body fits the 4096-byte limit, and the
/// XML part of it.
fn reply() -> impl Strategy<Value = (Vec<u8>, StatusCode, String)> {
    (status_code(), body()).prop_map(|(status, xml)| {
        let room = MAX_MESSAGE - frame::status_line(status).len();
        let xml = cap_utf8(xml, room);
        (frame::frame_reply(status, &xml), status, xml)
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Where `part` lies inside `whole` (it must be a subslice of it).
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Body ranges taken after the first read, after the second, and the bytes consumed.
type TwoReads = (Vec<Range<usize>>, Vec<Range<usize>>, usize);

/// One TCP reader: `wire[..cut]` arrives first, then the rest. Takes every whole frame after
/// each read, as a receive loop does. Returns the body ranges taken after the first read,
/// after the second, and how many bytes were consumed.
fn read_in_two(wire: &[u8], cut: usize, exact: bool) -> Result<TwoReads, FrameError> {
    let mut start = 0;
    let mut reads: [Vec<Range<usize>>; 2] = Default::default();
    for (i, avail) in [cut, wire.len()].into_iter().enumerate() {
        while let Some((body, used)) = frame::take_framed(&wire[start..avail], exact)? {
            reads[i].push(range_in(wire, body));
            start += used;
        }
    }
    let [first, second] = reads;
    Ok((first, second, start))
}

/// Like [`read_in_two`] with the client's `take_reply(Expect::Framed)`: message end offsets.
fn replies_in_two(wire: &[u8], cut: usize) -> Result<(Vec<usize>, Vec<usize>), FrameError> {
    let mut start = 0;
    let mut reads: [Vec<usize>; 2] = Default::default();
    for (i, avail) in [cut, wire.len()].into_iter().enumerate() {
        while let Some(used) = take_reply(&wire[start..avail], Expect::Framed)? {
            assert!(used > 0, "take_reply(Framed) handed out an empty message");
            start += used;
            reads[i].push(start);
        }
    }
    let [first, second] = reads;
    Ok((first, second))
}

/// Frames laid back to back: the body range and the end offset of each, as built.
fn layout(frames: &[&[u8]], bodies: &[usize]) -> Vec<(Range<usize>, usize)> {
    let mut at = 0;
    frames
        .iter()
        .zip(bodies)
        .map(|(f, &body_len)| {
            let end = at + f.len();
            at = end;
            (end - body_len..end, end)
        })
        .collect()
}

/// Splits `wire` (the frames of `expected`, back to back) at every point and checks that a
/// reader gets exactly the expected bodies, each as soon as its last byte has arrived.
fn check_every_split(wire: &[u8], expected: &[(Range<usize>, usize)], exact: bool) -> Result<(), TestCaseError> {
    for cut in 0..=wire.len() {
        let (first, second, consumed) =
            read_in_two(wire, cut, exact).map_err(|e| TestCaseError::fail(format!("cut at {cut}: {e}")))?;
        let ready = expected.iter().filter(|(_, end)| *end <= cut).count();
        let want_first: Vec<_> = expected[..ready].iter().map(|(r, _)| r.clone()).collect();
        let want_second: Vec<_> = expected[ready..].iter().map(|(r, _)| r.clone()).collect();
        prop_assert_eq!(&first, &want_first, "first read, cut at {}", cut);
        prop_assert_eq!(&second, &want_second, "second read, cut at {}", cut);
        prop_assert_eq!(consumed, wire.len(), "cut at {}", cut);
    }
    Ok(())
}

fn caps_line(tunnels: u8, auths: u8) -> Vec<u8> {
    Capabilities {
        tunnels,
        auths,
        ..Default::default()
    }
    .to_line()
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No input makes a framing or capability parser panic, and no returned length exceeds
    /// the input or a framed body the 4096-byte limit.
    #[test]
    fn arbitrary_bytes_never_panic(data in any_input()) {
        for exact in [true, false] {
            if let Ok(Some((body, used))) = frame::take_framed(&data, exact) {
                prop_assert!(used <= data.len());
                prop_assert!(body.len() <= MAX_MESSAGE);
                prop_assert_eq!(body, &data[used - body.len()..used]);
            }
            if let Ok(body) = frame::parse_framed_datagram(&data, exact) {
                prop_assert!(body.len() <= MAX_MESSAGE && body.len() <= data.len());
            }
        }
        if let Ok(Some((line, used))) = frame::take_line(&data) {
            prop_assert!(used <= data.len() && used <= MAX_MESSAGE);
            prop_assert_eq!(line, &data[..used]);
            prop_assert_eq!(line.last(), Some(&b'\n'));
        }
        if let Ok(st) = frame::parse_status_line(&data) {
            prop_assert!(st.status.code() < 1_000_000_000);
        }
        let _ = frame::split_status(&data);
        for expect in EXPECTS {
            if let Ok(Some(used)) = take_reply(&data, expect) {
                prop_assert!(used <= data.len(), "{:?}: {} of {} bytes", expect, used, data.len());
            }
        }
        if let Ok(c) = Capabilities::parse(&data) {
            prop_assert_eq!(c.tunnels & !(TUNNEL_BITS.iter().fold(0, |a, b| a | b)), 0);
            prop_assert_eq!(c.auths & !(AUTH_BITS.iter().fold(0, |a, b| a | b)), 0);
        }
    }

    /// A client request (`Content-length: N` + XML) split into two reads at any point comes
    /// out whole, exactly once, as soon as its last byte is in; in both header modes.
    #[test]
    fn request_survives_any_split(xml in body()) {
        let wire = frame::frame_request(&xml);
        prop_assert_eq!(&wire[wire.len() - xml.len()..], xml.as_bytes());
        let expected = layout(&[wire.as_slice()], &[xml.len()]);
        check_every_split(&wire, &expected, false)?;
        check_every_split(&wire, &expected, true)?;
        prop_assert_eq!(frame::parse_framed_datagram(&wire, true), Ok(xml.as_bytes()));
    }

    /// The same for a broker reply (`Content-length: M` + status line + XML), which the
    /// client reads with the case-sensitive header; its status and XML split back apart.
    #[test]
    fn reply_survives_any_split((wire, status, xml) in reply()) {
        let body_len = wire.len() - wire.iter().position(|&b| b == b'\n').unwrap() - 1;
        prop_assert!(body_len <= MAX_MESSAGE);
        let expected = layout(&[wire.as_slice()], &[body_len]);
        check_every_split(&wire, &expected, true)?;
        let (body, _) = frame::take_framed(&wire, true).unwrap().unwrap();
        let (st, rest) = frame::split_status(body).unwrap();
        prop_assert_eq!(st.status, status);
        prop_assert_eq!(rest, xml.as_bytes());
        for cut in 0..=wire.len() {
            let (first, second) = replies_in_two(&wire, cut)
                .map_err(|e| TestCaseError::fail(format!("cut at {cut}: {e}")))?;
            let (want_first, want_second) =
                if cut == wire.len() { (vec![wire.len()], vec![]) } else { (vec![], vec![wire.len()]) };
            prop_assert_eq!(first, want_first, "take_reply first read, cut at {}", cut);
            prop_assert_eq!(second, want_second, "take_reply second read, cut at {}", cut);
        }
    }

    /// Two frames coalesced into one byte stream come out as two, whatever the split.
    #[test]
    fn coalesced_requests_come_out_as_two(a in body(), b in body()) {
        let (fa, fb) = (frame::frame_request(&a), frame::frame_request(&b));
        let wire = [fa.as_slice(), fb.as_slice()].concat();
        let expected = layout(&[fa.as_slice(), fb.as_slice()], &[a.len(), b.len()]);
        check_every_split(&wire, &expected, false)?;
        check_every_split(&wire, &expected, true)?;
    }

    #[test]
    fn coalesced_replies_come_out_as_two((fa, _, xa) in reply(), (fb, _, xb) in reply()) {
        let wire = [fa.as_slice(), fb.as_slice()].concat();
        let body_a = fa.len() - fa.iter().position(|&b| b == b'\n').unwrap() - 1;
        let body_b = fb.len() - fb.iter().position(|&b| b == b'\n').unwrap() - 1;
        let expected = layout(&[fa.as_slice(), fb.as_slice()], &[body_a, body_b]);
        check_every_split(&wire, &expected, true)?;
        // And the client's reply reader agrees on where each one ends.
        let (first, second) = replies_in_two(&wire, wire.len()).unwrap();
        prop_assert_eq!(first, vec![fa.len(), wire.len()]);
        prop_assert!(second.is_empty());
        let (_, rest_a) = frame::split_status(&wire[expected[0].0.clone()]).unwrap();
        let (_, rest_b) = frame::split_status(&wire[expected[1].0.clone()]).unwrap();
        prop_assert_eq!(rest_a, xa.as_bytes());
        prop_assert_eq!(rest_b, xb.as_bytes());
    }

    /// `<n> <text>` gives back code `n` for every n below 10^9, with or without text.
    #[test]
    fn status_line_round_trips_code(n in 0u32..1_000_000_000, text in "([!-~]([ -~]{0,38}[!-~])?)?") {
        let line = if text.is_empty() { format!("{n}\r\n") } else { format!("{n} {text}\r\n") };
        let st = frame::parse_status_line(line.as_bytes()).unwrap();
        prop_assert_eq!(st.status.code(), n);
        prop_assert_eq!(st.status, StatusCode::from_code(n));
        prop_assert_eq!(st.text, text.as_str());
        // Without its CRLF, and as the broker writes it.
        prop_assert_eq!(frame::parse_status_line(line.trim_end().as_bytes()).unwrap().status.code(), n);
        let written = frame::status_line(StatusCode::from_code(n));
        prop_assert_eq!(frame::parse_status_line(&written).unwrap().status.code(), n);
        prop_assert_eq!(frame::split_status(line.as_bytes()).unwrap().0.status.code(), n);
    }

    /// Ten digits or more is not a status code (it would overflow gogoc's `atoi` range).
    #[test]
    fn ten_digit_status_is_refused(n in 1_000_000_000u64..=u64::MAX) {
        let line = format!("{n} Success\r\n");
        prop_assert!(matches!(frame::parse_status_line(line.as_bytes()), Err(FrameError::NonNumericStatus(_))));
    }

    /// gogoc's tokenizer: single-space separated known tokens in any order and AUTH values
    /// in any case give the union of their bits; without the CRLF the last token is lost.
    #[test]
    fn capability_tokens_in_any_order(
        tokens in prop::collection::vec((0usize..7, prop::bool::ANY), 1..10),
    ) {
        let names = ["TUNNEL=V6V4", "TUNNEL=V6UDPV4", "TUNNEL=V4V6", "AUTH=PASSDSS-3DES-1", "AUTH=DIGEST-MD5", "AUTH=PLAIN", "AUTH=ANONYMOUS"];
        let bits = |i: usize| if i < 3 { (TUNNEL_BITS[i], 0) } else { (0, AUTH_BITS[i - 3]) };
        let words: Vec<String> = tokens
            .iter()
            .map(|&(i, lower)| {
                let w = names[i];
                if lower && i >= 3 { format!("AUTH={}", w[5..].to_ascii_lowercase()) } else { w.to_owned() }
            })
            .collect();
        let union = |upto: usize| {
            tokens[..upto].iter().fold((0, 0), |(t, a), &(i, _)| (t | bits(i).0, a | bits(i).1))
        };
        let line = format!("CAPABILITY {}\r\n", words.join(" "));
        let c = Capabilities::parse(line.as_bytes()).unwrap();
        prop_assert_eq!((c.tunnels, c.auths), union(tokens.len()));
        prop_assert!(!c.unterminated);
        prop_assert_eq!(c.ignored_tokens, 0);
        let cut = format!("CAPABILITY {}", words.join(" "));
        let c = Capabilities::parse(cut.as_bytes()).unwrap();
        prop_assert_eq!((c.tunnels, c.auths), union(tokens.len() - 1));
        prop_assert!(c.unterminated);
    }
}

// ---------------------------------------------------------------------------------------------
// Exhaustive and fixed cases

/// Every combination of the 3 tunnel bits and the 4 auth bits that has at least one bit
/// survives `to_line` → `parse` (the all-empty set has its own test below).
#[test]
fn capabilities_round_trip_every_bit_combination() {
    let mut checked = 0;
    for tunnels in 0u8..8 {
        for auths in 0u8..16 {
            let t = (0..3)
                .filter(|i| tunnels & (1 << i) != 0)
                .fold(0, |acc, i| acc | TUNNEL_BITS[i]);
            let a = (0..4)
                .filter(|i| auths & (1 << i) != 0)
                .fold(0, |acc, i| acc | AUTH_BITS[i]);
            if t == 0 && a == 0 {
                continue;
            }
            let line = caps_line(t, a);
            let back = Capabilities::parse(&line)
                .unwrap_or_else(|e| panic!("{:?} does not parse: {e}", String::from_utf8_lossy(&line)));
            assert_eq!(
                (back.tunnels, back.auths),
                (t, a),
                "{:?}",
                String::from_utf8_lossy(&line)
            );
            assert!(!back.unterminated);
            assert_eq!(back.ignored_tokens, 0);
            assert!(line.ends_with(b"\r\n") && !line.windows(2).any(|w| w == b"  "));
            checked += 1;
        }
    }
    assert_eq!(checked, 8 * 16 - 1);
}

/// Found by the `capability` fuzz target: a line that yields no bits (e.g.
/// `CAPABILITY TUNNEL=DIGEST-MD5`) re-serialises as a bare `CAPABILITY\r\n`, which must parse.
#[test]
fn capabilities_round_trip_empty_set() {
    let back = Capabilities::parse(&caps_line(0, 0)).expect("to_line() of no capabilities must parse");
    assert_eq!((back.tunnels, back.auths), (0, 0));
    assert!(!back.unterminated);
}

#[test]
fn status_code_boundaries() {
    for n in [
        0u32,
        1,
        9,
        10,
        200,
        999,
        1000,
        1001,
        1200,
        99_999_999,
        100_000_000,
        999_999_999,
    ] {
        let line = format!("{n} text\r\n");
        assert_eq!(
            frame::parse_status_line(line.as_bytes()).unwrap().status.code(),
            n,
            "{line:?}"
        );
    }
    assert!(frame::parse_status_line(b"1000000000 text\r\n").is_err());
    assert_eq!(StatusCode::from_code(1000), StatusCode::Other(1000));
    assert_eq!(StatusCode::from_code(1001), StatusCode::Redirect(1001));
}

#[test]
fn largest_frames_are_accepted_and_one_more_byte_is_not() {
    let xml = "z".repeat(MAX_MESSAGE);
    let wire = frame::frame_request(&xml);
    assert_eq!(frame::take_framed(&wire, false), Ok(Some((xml.as_bytes(), wire.len()))));
    let reply_xml = "z".repeat(MAX_MESSAGE - frame::status_line(StatusCode::Success).len());
    let reply = frame::frame_reply(StatusCode::Success, &reply_xml);
    assert!(reply.starts_with(b"Content-length: 4096\r\n"));
    assert_eq!(take_reply(&reply, Expect::Framed), Ok(Some(reply.len())));
    let too_big = frame::frame_request(&"z".repeat(MAX_MESSAGE + 1));
    assert_eq!(
        frame::take_framed(&too_big, false),
        Err(FrameError::ContentLengthTooLarge(4097))
    );
}
