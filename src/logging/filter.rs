//! Which targets and levels each of gogoc's log levels lets through (docs/tsp-wire.md §9).

use tracing_subscriber::filter::{LevelFilter, Targets};

/// Targets whose level the gogoc levels set fully; every other crate gets less (see the table).
/// Our library crates, one per layer, then our programs (`tsp_broker` is both the broker
/// library and the program's crate name).
pub(super) const OUR_TARGETS: [&str; 10] = [
    "nm_tsp",
    "tsp_proto",
    "tsp_config",
    "tsp_tunnel",
    "tsp_client",
    "tsp_broker",
    "tsp_nm",
    "tspc",
    "nm_tsp_service",
    "nm_tsp_auth_dialog",
];
/// The libraries alone: their info lines show on stderr by default.
pub(super) const OUR_LIBRARIES: &[&str] = OUR_TARGETS.split_at(7).0;
/// The highest stderr rank (`-vvvv`): everything at trace, dependencies included.
pub(super) const MAX_RANK: u8 = 4;

/// The filter for a gogoc level (see the table in the module documentation); `None` = off.
pub(super) fn rank_filter(rank: u8) -> Option<Targets> {
    let (ours, others) = match rank {
        0 => return None,
        1 => (LevelFilter::INFO, LevelFilter::WARN),
        2 => (LevelFilter::DEBUG, LevelFilter::INFO),
        3 => (LevelFilter::TRACE, LevelFilter::INFO),
        _ => (LevelFilter::TRACE, LevelFilter::TRACE),
    };
    Some(OUR_TARGETS.iter().fold(Targets::new().with_default(others), |t, name| {
        t.with_target(*name, ours)
    }))
}
