//! The TSP XML documents (spec §4): the broker's `info` offer, the redirection list and the
//! client's `create` request, parsed from arbitrary bytes.
//!
//! Invariants: nothing panics; an `Offer` that parses re-serialises with `build_info` and
//! parses again to an equal value; the same holds for a redirection list (which comes back
//! in gogoc's try order) and a `create` request (prefix length 0 means the default), as
//! long as the re-serialised document still fits the 4096-byte message limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsp_proto::TunnelMode;
use tsp_proto::types::MAX_MESSAGE;
use tsp_proto::xml;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = xml::parse_info(data) {
        assert!(offer.mode.is_concrete());
        let text = xml::build_info(&offer);
        let again = xml::parse_info(text.as_bytes())
            .unwrap_or_else(|e| panic!("build_info output does not parse ({e}):\n{text}"));
        assert_eq!(again, offer, "offer changed through build_info:\n{text}");
    }

    if let Ok(list) = xml::parse_redirect(data) {
        assert!(!list.is_empty() && list.len() <= tsp_proto::types::MAX_BROKERS);
        let text = xml::build_redirect(&list);
        if text.len() <= MAX_MESSAGE {
            let again = xml::parse_redirect(text.as_bytes())
                .unwrap_or_else(|e| panic!("build_redirect output does not parse ({e}):\n{text}"));
            assert_eq!(
                again,
                xml::redirect_try_order(&list),
                "broker list changed through build_redirect:\n{text}"
            );
        }
    }

    if let Ok(req) = xml::parse_create(data) {
        let text = xml::build_create(&req);
        if text.len() <= MAX_MESSAGE {
            let again = xml::parse_create(text.as_bytes())
                .unwrap_or_else(|e| panic!("build_create output does not parse ({e}):\n{text}"));
            let mut expected = req.clone();
            if let Some(router) = expected.router.as_mut()
                && router.prefix_len == 0
            {
                router.prefix_len = if req.mode == TunnelMode::V4V6 { 24 } else { 48 };
            }
            assert_eq!(again, expected, "request changed through build_create:\n{text}");
        }
    }
});
