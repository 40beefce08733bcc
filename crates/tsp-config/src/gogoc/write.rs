//! Writing gogoc.conf / gw6c.conf: every key of the dialect, in the field list's order
//! (docs/tsp-wire.md §9).

use std::fmt::Write as _;

use super::keys::Field;
use super::model::{Dialect, GogocConfig};
use tsp_proto::types::DatapathKind;

/// Writes `cfg` as a complete gogoc.conf (or gw6c.conf, per `cfg.dialect`): every key
/// explicitly, password included. The result reads back equal for every configuration
/// that passes [`GogocConfig::validate`].
pub fn to_text(cfg: &GogocConfig) -> String {
    to_text_with(cfg, true)
}

/// [`to_text`], optionally leaving `passwd` empty (to be filled in by the user or taken
/// from a keyring).
pub fn to_text_with(cfg: &GogocConfig, include_password: bool) -> String {
    let d = cfg.dialect;
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "# {} written by NetworkManager-tsp.", d.file_name());
    out.push_str("# One name=value per line; '#' starts a comment line; an empty value means the default.\n\n");
    for field in Field::all() {
        let Some(key) = field.written_key(d) else {
            continue;
        };
        match field {
            Field::Passwd if !include_password => {
                out.push_str("# passwd left out on purpose: fill it in before use.\n");
                let _ = writeln!(out, "{key}=");
            }
            Field::Passwd => {
                let _ = writeln!(out, "{key}={}", cfg.passwd.expose());
            }
            // Written only when set, so a default file stays byte-for-byte gogoc's key set.
            Field::AllowPlain if cfg.allow_plain => {
                out.push_str("# NetworkManager-tsp only (gogoc ignores it): allow PLAIN with auth_method=any.\n");
                let _ = writeln!(out, "{key}={}", field.text(cfg));
            }
            Field::AllowPlain => {}
            Field::RouterFallbackHost if cfg.router_fallback_host => {
                out.push_str("# NetworkManager-tsp only (gogoc ignores it): a router answered without a prefix runs as a host.\n");
                let _ = writeln!(out, "{key}={}", field.text(cfg));
            }
            Field::RouterFallbackHost => {}
            Field::DatapathKind if cfg.datapath_kind != DatapathKind::Auto => {
                out.push_str(
                    "# NetworkManager-tsp only (gogoc ignores it): kernel tunnel links or the userspace datapath.\n",
                );
                let _ = writeln!(out, "{key}={}", field.text(cfg));
            }
            Field::DatapathKind => {}
            Field::BusyPoll if cfg.busy_poll != 0 => {
                out.push_str(
                    "# NetworkManager-tsp only (gogoc ignores it): microseconds the datapath polls before it sleeps.\n",
                );
                let _ = writeln!(out, "{key}={}", field.text(cfg));
            }
            Field::BusyPoll => {}
            _ => {
                let _ = writeln!(out, "{key}={}", field.text(cfg));
            }
        }
    }
    out
}

/// The keys of `cfg` (spelled as its dialect writes them, in file order) whose values differ
/// from the dialect's defaults; never `passwd`. Import uses it to report what a profile cannot
/// carry.
/// The text of gogoc.conf key `key` in `cfg` when it differs from its text in `defaults`;
/// `None` when it does not, or for a key that is no field. The vpn.data mapping is made of it
/// (`vpn_data::to_vpn_data`), so each key's text is written in one place, the field table.
pub(crate) fn non_default_value(cfg: &GogocConfig, defaults: &GogocConfig, key: &str) -> Option<String> {
    let field = Field::all().find(|f| f.written_key(Dialect::Gogoc) == Some(key))?;
    let text = field.text(cfg);
    (text != field.text(defaults)).then_some(text)
}

pub fn non_default_keys(cfg: &GogocConfig) -> Vec<&'static str> {
    let defaults = GogocConfig::default_for(cfg.dialect);
    Field::all()
        .filter(|f| *f != Field::Passwd)
        .filter_map(|f| Some((f.written_key(cfg.dialect)?, f)))
        .filter(|(_, f)| f.text(cfg) != f.text(&defaults))
        .map(|(key, _)| key)
        .collect()
}
