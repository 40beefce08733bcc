//! gogoc.conf / gw6c.conf parsing (spec §9): arbitrary text never panics; a file that parses
//! and validates is written back by `to_text` into a file that parses to the same config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tsp_config as config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = config::parse(text, Path::new("fuzz.conf")) else {
        return;
    };
    if cfg.validate(Path::new("fuzz.conf")).is_err() {
        return;
    }
    let again = config::parse(&config::to_text(&cfg), Path::new("again.conf")).expect("to_text output must parse");
    assert_eq!(again, cfg, "to_text must round-trip");
});
