//! The client's `create` request as the broker reads it: `Content-length: N\r\n` + the
//! `<tunnel action="create">` document, and the broker's answer (docs/tsp-wire.md §1.2,
//! §4.2, §4.3, §10 items 2–3).
//!
//! Input: two `Setup` bytes (transport, TSP 1.0.1 over TCP instead of 2.0.0, refusals,
//! redirections, how lookups are answered), then what the client sends after an anonymous
//! login, cut at every `|||` as in `server_session`; the first piece is the request.
//!
//! Invariants: the `Driver`'s; and the first piece is answered as the request reads: a whole
//! frame whose document `xml::parse_create` reads reaches the backend as exactly that
//! request, and the answer is one `Content-length` frame the client takes whole, holding
//! `200 Success` and an offer the client's parser reads back to the backend's offer, or a
//! refusal whose status line is one clean line, or a `1200` redirection whose broker list
//! the client reads back; a document that does not parse gets a framed `500`; an incomplete
//! frame gets nothing yet; a broken header ends the session unanswered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{Driver, Setup, pieces, redirect_list};
use tsp_proto::client::{Expect, Transport, take_reply};
use tsp_proto::sasl::Mechanism;
use tsp_proto::types::MAX_MESSAGE;
use tsp_proto::{StatusCode, frame, xml};

/// The broker's answer as the client's create stage reads it: one frame, exactly.
fn read_as_client(reply: &[u8]) -> (StatusCode, String, &[u8]) {
    assert_eq!(take_reply(reply, Expect::Framed), Ok(Some(reply.len())));
    let body = frame::parse_framed_datagram(reply, true).expect("the reply is one frame");
    let (status, xml) = frame::split_status(body).expect("the frame starts with a status line");
    (status.status, status.text.to_owned(), xml)
}

fuzz_target!(|data: &[u8]| {
    let Some((setup, rest)) = Setup::read(data) else {
        return;
    };
    const USED: u16 =
        Setup::UDP | Setup::OLD_VERSIONS | Setup::REFUSE | Setup::REDIRECT_OFFERS | Setup::ASYNC | Setup::LATE;
    let setup = Setup(setup.0 & USED).with(Setup::ANONYMOUS);
    let udp = setup.transport() == Transport::Udp;
    let legacy = setup.has(Setup::OLD_VERSIONS) && !udp;
    let mut d = Driver::new(setup);
    d.send(if legacy {
        b"VERSION=1.0.1\r\n"
    } else {
        b"VERSION=2.0.0\r\n"
    });
    d.send(Mechanism::Anonymous.authenticate_line());
    assert_eq!(d.log.replies.len(), 2, "CAPABILITY, 200");

    let mut pieces = pieces(rest);
    let request = pieces.next().unwrap_or_default();
    if udp && request.starts_with(b"VERSION=") {
        // Starts a new session (server_session covers that): no request to look at.
        return;
    }
    d.send(request);
    d.settle();
    let answer = d.log.replies.get(2).cloned();
    for piece in pieces {
        if !(udp && piece.starts_with(b"VERSION=")) {
            d.send(piece);
        }
    }
    d.settle();

    let body = match frame::take_framed(request, false) {
        Err(_) => {
            assert!(answer.is_none() && d.log.closed, "a broken frame was answered");
            return;
        }
        Ok(None) => {
            assert!(answer.is_none(), "an incomplete frame was answered");
            return;
        }
        Ok(Some((body, _))) => body,
    };
    let answer = answer.expect("a whole request is answered");
    assert!(answer.len() <= MAX_MESSAGE);
    let (status, text, offer_xml) = read_as_client(&answer);
    let Ok(parsed) = xml::parse_create(body) else {
        assert_eq!(status, StatusCode::InvalidRequest);
        assert!(d.log.closed && d.backend.requests.is_empty());
        return;
    };
    let (_, asked) = d.backend.requests.first().expect("the request reached the backend");
    assert_eq!(*asked, parsed);
    match status {
        StatusCode::Success => {
            let offer = xml::parse_info(offer_xml).expect("the client reads the broker's offer");
            assert_eq!(d.backend.offers.first(), Some(&offer));
            if legacy {
                assert_eq!(d.log.established.as_ref(), Some(&offer), "1.0.1 has no accept");
            }
        }
        StatusCode::Redirect(code) => {
            assert_eq!(code, 1200);
            assert!(setup.has(Setup::REDIRECT_OFFERS) && d.log.closed);
            assert_eq!(
                xml::parse_redirect(offer_xml).expect("the client reads the broker list"),
                xml::redirect_try_order(&redirect_list())
            );
        }
        refused => {
            assert!(matches!(
                refused,
                StatusCode::ServerTooBusy | StatusCode::UnsupportedTunnelType
            ));
            assert!(
                offer_xml.is_empty() && !text.contains(['\r', '\n']),
                "refusal: {text:?}"
            );
            assert!(d.log.closed);
        }
    }
});
