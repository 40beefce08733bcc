//! Stream and datagram framing of TSP messages (spec §1.2, §1.4, §10.2–3).
//!
//! Every entry point gets the raw bytes a peer could send. Invariants: nothing panics, a
//! returned length never exceeds the input, a framed body never exceeds 4096 bytes, and a
//! stream parser's decision does not depend on bytes after the message it hands out (the
//! same message comes out of exactly its own bytes, and one byte less is "need more").
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsp_proto::client::{Expect, take_reply};
use tsp_proto::frame;
use tsp_proto::types::MAX_MESSAGE;

const EXPECTS: [Expect; 4] = [Expect::Line, Expect::PassDssServerMessage, Expect::Framed, Expect::Ack];

fn check_take_framed(data: &[u8], exact: bool) {
    let Ok(Some((body, used))) = frame::take_framed(data, exact) else {
        return;
    };
    assert!(
        used <= data.len(),
        "take_framed consumed {used} of {} bytes",
        data.len()
    );
    assert!(body.len() <= MAX_MESSAGE, "framed body of {} bytes", body.len());
    assert!(body.len() <= used);
    assert_eq!(
        body,
        &data[used - body.len()..used],
        "body is not the tail of the frame"
    );
    // The frame alone gives the same answer; one byte less is an incomplete frame.
    assert_eq!(frame::take_framed(&data[..used], exact), Ok(Some((body, used))));
    assert_eq!(frame::take_framed(&data[..used - 1], exact), Ok(None));
}

fn check_datagram(data: &[u8], exact: bool) {
    if let Ok(body) = frame::parse_framed_datagram(data, exact) {
        assert!(body.len() <= MAX_MESSAGE, "datagram body of {} bytes", body.len());
        assert!(body.len() <= data.len());
        // A whole datagram is exactly one stream frame.
        assert_eq!(frame::take_framed(data, exact), Ok(Some((body, data.len()))));
    }
}

fn check_take_reply(data: &[u8], expect: Expect) {
    let Ok(Some(used)) = take_reply(data, expect) else {
        return;
    };
    assert!(
        used <= data.len(),
        "take_reply({expect:?}) consumed {used} of {} bytes",
        data.len()
    );
    if matches!(expect, Expect::Framed | Expect::Line) {
        // The reply alone is still one whole reply of the same length.
        assert_eq!(
            take_reply(&data[..used], expect),
            Ok(Some(used)),
            "take_reply({expect:?}) depends on bytes after the reply"
        );
    }
    if expect == Expect::Framed && used > 0 {
        assert_eq!(take_reply(&data[..used - 1], expect), Ok(None));
    }
}

fuzz_target!(|data: &[u8]| {
    for exact in [true, false] {
        check_take_framed(data, exact);
        check_datagram(data, exact);
    }
    if let Ok(Some((line, used))) = frame::take_line(data) {
        assert!(used <= data.len() && line.len() == used);
        assert_eq!(line.last(), Some(&b'\n'));
    }
    if let Ok(st) = frame::parse_status_line(data) {
        assert!(st.status.code() < 1_000_000_000, "status code of 10+ digits");
        assert!(st.text.len() <= data.len());
    }
    if let Ok((st, rest)) = frame::split_status(data) {
        assert!(st.text.len() + rest.len() <= data.len());
    }
    for expect in EXPECTS {
        check_take_reply(data, expect);
    }
});
