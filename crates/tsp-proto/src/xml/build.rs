//! Writing the documents byte for byte as gogoc and the real brokers do (docs/tsp-wire.md §4.2–4.4).

use std::net::{IpAddr, Ipv6Addr};

use super::*;
use crate::types::TunnelMode;

/// The `create` request exactly as gogoc 1.2 writes it (§4.2): CRLF line ends, literal
/// indentation, final CRLF included (its length is the `Content-length`).
///
/// The client address is written in the family it has; the keepalive target is `::`, or
/// `127.0.0.1` for `v4v6`. A `prefix_len` of 0 is written as gogoc's default (48, or 24
/// for `v4v6`). DNS names must already be valid host names (see [`is_valid_hostname`]):
/// nothing is escaped, as gogoc escapes nothing.
pub fn build_create(req: &CreateRequest) -> String {
    let v4v6 = req.mode == TunnelMode::V4V6;
    let mut out = String::with_capacity(256);
    push_all(
        &mut out,
        &[
            "<tunnel action=\"create\" type=\"",
            req.mode.as_str(),
            "\" proxy=\"",
            if req.proxy { "yes" } else { "no" },
            "\">\r\n <client>\r\n",
        ],
    );
    push_address(&mut out, "  ", req.client_addr, false);
    if let Some(interval) = req.keepalive {
        push_all(
            &mut out,
            &["  <keepalive interval=\"", &interval.to_string(), "\">\r\n"],
        );
        let target = if v4v6 {
            "    <address type=\"ipv4\">127.0.0.1</address>\r\n"
        } else {
            "    <address type=\"ipv6\">::</address>\r\n"
        };
        push_all(&mut out, &[target, "  </keepalive>\r\n"]);
    }
    if let Some(router) = &req.router {
        let len = match router.prefix_len {
            0 if v4v6 => 24,
            0 => 48,
            n => n,
        };
        push_all(
            &mut out,
            &["  <router>\r\n   <prefix length=\"", &len.to_string(), "\"/>\r\n"],
        );
        if !router.dns_names.is_empty() {
            out.push_str("   <dns_server>\r\n");
            for name in &router.dns_names {
                push_all(&mut out, &["     <address type=\"dn\">", name, "</address>\r\n"]);
            }
            out.push_str("   </dns_server>\r\n");
        }
        out.push_str("  </router>\r\n");
    }
    out.push_str(" </client>\r\n</tunnel>\r\n");
    out
}

/// The broker's `info` offer body, without the `200 Success\r\n` status line, in the layout
/// of §4.3 that gogoc's strict parser reads: no prolog, double quotes, one-space indentation,
/// CRLF line ends, no blanks around text, IPv6 addresses and the prefix fully expanded.
///
/// Element order: `server{ipv4, ipv6}`, `client{ipv4, ipv6, dn?, dns_server?, router?,
/// keepalive?}`. The DNS name must be a valid host name (nothing is escaped).
pub fn build_info(offer: &Offer) -> String {
    let mut out = String::with_capacity(768);
    push_all(
        &mut out,
        &["<tunnel action=\"info\" type=\"", offer.mode.as_str(), "\""],
    );
    if let Some(lifetime) = offer.lifetime {
        push_all(&mut out, &[" lifetime=\"", &lifetime.to_string(), "\""]);
    }
    out.push_str(">\r\n <server>\r\n");
    push_address(&mut out, "  ", IpAddr::V4(offer.server_v4), true);
    push_address(&mut out, "  ", IpAddr::V6(offer.server_v6), true);
    out.push_str(" </server>\r\n <client>\r\n");
    push_address(&mut out, "  ", IpAddr::V4(offer.client_v4), true);
    push_address(&mut out, "  ", IpAddr::V6(offer.client_v6), true);
    if let Some(name) = &offer.client_dns_name {
        push_all(&mut out, &["  <address type=\"dn\">", name, "</address>\r\n"]);
    }
    if let Some(dns) = offer.client_dns_server {
        out.push_str("  <dns_server>\r\n");
        push_address(&mut out, "   ", IpAddr::V6(dns), true);
        out.push_str("  </dns_server>\r\n");
    }
    if let Some(prefix) = offer.prefix {
        push_all(
            &mut out,
            &[
                "  <router>\r\n   <prefix length=\"",
                &prefix.len.to_string(),
                "\">",
                &ip_text(prefix.addr, true),
                "</prefix>\r\n  </router>\r\n",
            ],
        );
    }
    if let Some(ka) = offer.keepalive {
        push_all(
            &mut out,
            &["  <keepalive interval=\"", &ka.interval.to_string(), "\">\r\n"],
        );
        push_address(&mut out, "   ", ka.address, true);
        out.push_str("  </keepalive>\r\n");
    }
    out.push_str(" </client>\r\n</tunnel>\r\n");
    out
}

/// The redirection document body of §4.4, without the `1200 ...` status line. Brokers are
/// written in the order given; the client then tries them in [`redirect_try_order`]. IPv6
/// brokers are written compressed and unbracketed (gogoc adds the brackets itself); names
/// must be valid host names.
pub fn build_redirect(brokers: &[BrokerAddr]) -> String {
    let mut out = String::with_capacity(128 + 48 * brokers.len());
    out.push_str("<tunnel action=\"info\" type=\"v6anyv4\" lifetime=\"1440\">\r\n <broker>\r\n");
    for broker in brokers {
        match broker {
            BrokerAddr::V4(a) => push_address(&mut out, "  ", IpAddr::V4(*a), false),
            BrokerAddr::V6(a) => push_address(&mut out, "  ", IpAddr::V6(*a), false),
            BrokerAddr::Name(n) => push_all(&mut out, &["  <address type=\"dn\">", n, "</address>\r\n"]),
        }
    }
    out.push_str(" </broker>\r\n</tunnel>\r\n");
    out
}

pub(super) fn push_all(out: &mut String, parts: &[&str]) {
    for part in parts {
        out.push_str(part);
    }
}

/// One `<address type="ipvN">…</address>` line.
pub(super) fn push_address(out: &mut String, indent: &str, addr: IpAddr, expanded: bool) {
    let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    push_all(
        out,
        &[
            indent,
            "<address type=\"",
            family,
            "\">",
            &ip_text(addr, expanded),
            "</address>\r\n",
        ],
    );
}

pub(super) fn ip_text(addr: IpAddr, expanded: bool) -> String {
    match addr {
        IpAddr::V6(a) if expanded => expand_v6(a),
        other => other.to_string(),
    }
}

/// An IPv6 address as 8 groups of 4 lower-case hex digits
/// (`2001:0db8:4000:0000:0000:0000:0000:0004`), the form gogoc needs for prefixes.
pub fn expand_v6(addr: Ipv6Addr) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(39);
    for (i, seg) in addr.segments().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        for shift in [12u16, 8, 4, 0] {
            out.push(char::from(HEX[usize::from((seg >> shift) & 0xf)]));
        }
    }
    out
}

/// True for exactly 8 colon-separated groups of exactly 4 hex digits (either case): the
/// only IPv6 text form gogoc can cut into a `TSP_PREFIX`.
pub fn is_fully_expanded(text: &str) -> bool {
    let mut groups = 0;
    for group in text.split(':') {
        groups += 1;
        if groups > 8 || group.len() != 4 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
    }
    groups == 8
}

/// A DNS host name: dot-separated labels of 1..=63 letters, digits and inner hyphens, at
/// most 253 characters (one trailing dot allowed), and a last label that is not all digits
/// (so a malformed IPv4 literal is never taken for a name).
pub fn is_valid_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.split('.').all(label_ok)
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

/// The order in which gogoc tries the brokers of a redirection listed in `document_order`:
/// all IPv4 entries, then IPv6, then names, each group reversed (gogoc prepends to a linked
/// list per type, §4.4). This is the order before its optional distance sort (§7).
pub fn redirect_try_order(document_order: &[BrokerAddr]) -> Vec<BrokerAddr> {
    let of_kind = |want: u8| {
        document_order.iter().rev().filter(move |b| {
            let kind = match b {
                BrokerAddr::V4(_) => 0,
                BrokerAddr::V6(_) => 1,
                BrokerAddr::Name(_) => 2,
            };
            kind == want
        })
    };
    of_kind(0).chain(of_kind(1)).chain(of_kind(2)).cloned().collect()
}
