//! The TSP XML documents (docs/tsp-wire.md §4): the client's `create` request and `accept`, the
//! broker's `info` offer and the redirection broker list.
//!
//! Sans-IO: every function here turns values into bytes or bytes into values. Documents are
//! written by hand because the exact bytes matter (gogoc counts them for `Content-length`
//! and its own parser is strict about layout), and read with `quick-xml` into a small,
//! bounded tree before the TSP meaning is extracted.
//!
//! What the parsers accept is deliberately wider than what the builders write: real brokers
//! send compressed or expanded addresses, tabs or spaces between elements and attributes in
//! any order. What they refuse is what cannot be meant honestly in a TSP document: markup
//! beyond plain elements, attributes and text (entities, CDATA, comments, DOCTYPE,
//! processing instructions), oversized or over-nested input, and values that gogoc's own
//! validation would reject.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use crate::types::{MAX_BROKERS, MAX_MESSAGE, TunnelMode};

/// Deepest element nesting accepted. The deepest real path is
/// `tunnel/client/router/dns_server/address` (5); 8 leaves room for extensions.
pub const MAX_DEPTH: usize = 8;

/// Most elements accepted in one document. A full router offer has 15 and a 50-broker
/// redirect 52; the bound keeps hostile input from costing more than a few allocations.
pub const MAX_ELEMENTS: usize = 256;

/// Longest broker entry gogoc accepts in a redirection (its server string buffer).
pub const MAX_BROKER_LEN: usize = 254;

/// The client's final message after a usable offer (not sent by TSP 1.0.1 clients).
pub const ACCEPT: &str = "<tunnel action=\"accept\"></tunnel>\r\n";

// ---------------------------------------------------------------------------------------------
// Values

/// A client's `create` request (§4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// Requested mode; `v6anyv4` lets the broker pick by NAT detection.
    pub mode: TunnelMode,
    /// `proxy="yes"` (gogoc's `proxy_client=yes`).
    pub proxy: bool,
    /// The client's own endpoint: IPv4 for the IPv6-over-IPv4 modes, IPv6 for `v4v6`.
    pub client_addr: IpAddr,
    /// Requested keepalive interval in seconds; `None` omits the `<keepalive>` block.
    pub keepalive: Option<u32>,
    /// Present when the client is a router asking for a prefix.
    pub router: Option<RouterRequest>,
}

/// The `<router>` block of a `create` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRequest {
    /// Requested prefix length; 0 means "default" (48, or 24 for `v4v6`) as in gogoc.
    pub prefix_len: u8,
    /// Name servers for the reverse-DNS delegation, in configured order (may be empty).
    pub dns_names: Vec<String>,
}

/// The broker's `info` offer (§4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The mode the tunnel will run in; always concrete.
    pub mode: TunnelMode,
    /// Tunnel lifetime as sent (units ambiguous, §4.3); gogoc on Linux ignores it.
    pub lifetime: Option<u32>,
    /// The broker's IPv4 tunnel endpoint.
    pub server_v4: Ipv4Addr,
    /// The broker's IPv6 address inside the tunnel.
    pub server_v6: Ipv6Addr,
    /// The client's IPv4 endpoint as the broker sees it (public address behind NAT).
    pub client_v4: Ipv4Addr,
    /// The client's IPv6 address inside the tunnel.
    pub client_v6: Ipv6Addr,
    /// The client's DNS name (`<address type="dn">`), lower-cased.
    pub client_dns_name: Option<String>,
    /// A recursive DNS server for the client (TSP 2.0.2 `<client><dns_server>`).
    pub client_dns_server: Option<Ipv6Addr>,
    /// The delegated prefix, for routers.
    pub prefix: Option<OfferedPrefix>,
    /// The keepalive the client must run; absent means none.
    pub keepalive: Option<Keepalive>,
}

/// A delegated prefix: IPv6 for the IPv6-over-IPv4 modes, IPv4 for `v4v6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedPrefix {
    /// The prefix address (host bits are taken as sent).
    pub addr: IpAddr,
    /// Prefix length: 1..=128 for IPv6, 1..=32 for IPv4.
    pub len: u8,
}

/// The keepalive the broker imposes (gogoc uses the broker's interval, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Seconds between echo requests; 0 means "send none".
    pub interval: u32,
    /// Echo target, normally the broker's tunnel address.
    pub address: IpAddr,
}

/// One entry of a redirection broker list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BrokerAddr {
    /// `<address type="ipv4">`.
    V4(Ipv4Addr),
    /// `<address type="ipv6">` (written without brackets).
    V6(Ipv6Addr),
    /// `<address type="dn">`: a host name, kept as sent.
    Name(String),
}

/// Everything that can be wrong with a TSP XML document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Larger than any TSP message may be.
    #[error("TSP document is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// Not UTF-8 (TSP documents are ASCII).
    #[error("TSP document is not valid UTF-8 text")]
    NotUtf8,
    /// Not well-formed XML (quick-xml's diagnosis).
    #[error("malformed XML at byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    /// XML markup TSP never uses and gogoc cannot read.
    #[error("TSP documents may not contain {0}")]
    Forbidden(&'static str),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("XML elements are nested deeper than {max} levels")]
    TooDeep { max: usize },
    /// More than [`MAX_ELEMENTS`] elements.
    #[error("the document has more than {max} XML elements")]
    TooManyElements { max: usize },
    /// Non-blank text before or after the root element.
    #[error("text {0:?} outside the <tunnel> element")]
    StrayText(String),
    /// The input ends inside an element.
    #[error("the document ends inside <{0}> (no </{0}>)")]
    Unclosed(String),
    /// No element at all.
    #[error("the document contains no <tunnel> element")]
    NoRoot,
    /// The root element is not `<tunnel>`.
    #[error("the document's root element is <{0}>, not <tunnel>")]
    WrongRoot(String),
    /// A second top-level element after `</tunnel>`.
    #[error("element <{0}> follows the closing </tunnel>")]
    ExtraRoot(String),
    /// A required attribute is absent.
    #[error("<{element}> has no `{attribute}` attribute")]
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    /// An attribute has a value outside its vocabulary.
    #[error("<{element}> attribute `{attribute}` is {value:?}, expected {expected}")]
    InvalidAttribute {
        element: &'static str,
        attribute: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A request whose `action` is not `create`.
    #[error("the request's action is {0:?}, expected \"create\"")]
    WrongAction(String),
    /// A `type` that is not a TSP tunnel mode.
    #[error("unknown tunnel type {0:?} (expected v6v4, v6udpv4, v6anyv4 or v4v6)")]
    UnknownMode(String),
    /// An offer whose `type` is `v6anyv4`: a broker must decide the mode.
    #[error("the broker offered tunnel type `{0}`, which is not a mode a tunnel can run in")]
    NotConcrete(TunnelMode),
    /// A required element is absent.
    #[error("the document has no {0}")]
    MissingElement(&'static str),
    /// A required address of one family is absent.
    #[error("{element} has no {family} address")]
    MissingAddress {
        element: &'static str,
        family: &'static str,
    },
    /// An address that does not parse (whitespace around it included).
    #[error("{element} {family} address {value:?} is not a valid {family} address")]
    InvalidAddress {
        element: &'static str,
        family: &'static str,
        value: String,
    },
    /// An element that must hold only text holds elements.
    #[error("{0} must contain only text, not elements")]
    NotText(&'static str),
    /// An IPv6 prefix written compressed: gogoc derives `TSP_PREFIX` by cutting the string
    /// at a group boundary, so it needs all 8 groups of 4 digits.
    #[error("delegated prefix {0:?} is not fully expanded (8 groups of 4 hex digits)")]
    PrefixNotExpanded(String),
    /// A prefix length that is not a number in range for its family.
    #[error("prefix length {value:?} is not a number from {min} to {max}")]
    InvalidPrefixLength { value: String, min: u8, max: u8 },
    /// A numeric attribute that is not a decimal number.
    #[error("{what} {value:?} is not a whole number of seconds")]
    InvalidNumber { what: &'static str, value: String },
    /// A DNS name that is not a valid host name.
    #[error("{what} {value:?} is not a valid host name")]
    InvalidHostname { what: &'static str, value: String },
    /// A redirection without any usable broker.
    #[error("the redirection lists no broker")]
    NoBrokers,
    /// A redirection longer than gogoc's list.
    #[error("the redirection lists {count} brokers, more than the limit of {max}")]
    TooManyBrokers { count: usize, max: usize },
    /// A broker entry longer than gogoc's server string.
    #[error("a redirection entry is {len} characters long, more than the limit of {max}")]
    BrokerTooLong { len: usize, max: usize },
}

// ---------------------------------------------------------------------------------------------
// Builders

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

fn push_all(out: &mut String, parts: &[&str]) {
    for part in parts {
        out.push_str(part);
    }
}

/// One `<address type="ipvN">…</address>` line.
fn push_address(out: &mut String, indent: &str, addr: IpAddr, expanded: bool) {
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

fn ip_text(addr: IpAddr, expanded: bool) -> String {
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

// ---------------------------------------------------------------------------------------------
// Parsers

/// Reads a `create` request (broker side). Accepts gogoc's exact bytes and equivalent
/// layouts (attribute order, blanks between elements, self-closing or not); `action` must
/// be `create`. The client address is the one of the family the mode needs (IPv4, or IPv6
/// for `v4v6`); the keepalive target the client names is ignored (it is always a
/// placeholder).
pub fn parse_create(xml: &[u8]) -> Result<CreateRequest, XmlError> {
    let root = parse_document(xml)?;
    let action = root.attr("action").ok_or(XmlError::MissingAttribute {
        element: "tunnel",
        attribute: "action",
    })?;
    if !action.eq_ignore_ascii_case("create") {
        return Err(XmlError::WrongAction(action.to_owned()));
    }
    let mode = tunnel_type(&root)?;
    let proxy = match root.attr("proxy") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("no") => false,
        Some(v) if v.eq_ignore_ascii_case("yes") => true,
        Some(v) => {
            return Err(XmlError::InvalidAttribute {
                element: "tunnel",
                attribute: "proxy",
                value: v.to_owned(),
                expected: "\"yes\" or \"no\"",
            });
        }
    };
    let client = root
        .child("client")
        .ok_or(XmlError::MissingElement("<client> element"))?;
    let v4v6 = mode == TunnelMode::V4V6;
    let client_addr = if v4v6 {
        IpAddr::V6(v6_address(client, "<client>")?)
    } else {
        IpAddr::V4(v4_address(client, "<client>")?)
    };
    let keepalive = match client.child("keepalive") {
        None => None,
        Some(ka) => Some(number_attr(ka, "keepalive", "interval", "keepalive interval")?),
    };
    let router = match client.child("router") {
        None => None,
        Some(router) => {
            let prefix = router
                .child("prefix")
                .ok_or(XmlError::MissingElement("<prefix> inside <router>"))?;
            let max = if v4v6 { 32 } else { 128 };
            let prefix_len = prefix_length(prefix, 0, max)?;
            let mut dns_names = Vec::new();
            if let Some(dns) = router.child("dns_server") {
                for entry in dns.addresses("dn") {
                    let name = entry.text("<dns_server> address")?;
                    if !is_valid_hostname(name) {
                        return Err(XmlError::InvalidHostname {
                            what: "router DNS server name",
                            value: name.to_owned(),
                        });
                    }
                    dns_names.push(name.to_owned());
                }
            }
            Some(RouterRequest { prefix_len, dns_names })
        }
    };
    Ok(CreateRequest {
        mode,
        proxy,
        client_addr,
        keepalive,
        router,
    })
}

/// Reads a broker's `info` offer (client side); `body` is what follows the status line.
///
/// `action` is not checked (gogoc never checks it) but the root must be `<tunnel>`, the
/// `type` concrete and all four endpoint addresses present and valid. Unknown elements and
/// attributes are skipped. An IPv6 prefix must be fully expanded.
pub fn parse_info(body: &[u8]) -> Result<Offer, XmlError> {
    let root = parse_document(body)?;
    let mode = tunnel_type(&root)?;
    if !mode.is_concrete() {
        return Err(XmlError::NotConcrete(mode));
    }
    let lifetime = match root.attr("lifetime") {
        None => None,
        Some(_) => Some(number_attr(&root, "tunnel", "lifetime", "tunnel lifetime")?),
    };
    let server = root
        .child("server")
        .ok_or(XmlError::MissingElement("<server> element"))?;
    let client = root
        .child("client")
        .ok_or(XmlError::MissingElement("<client> element"))?;
    let server_v4 = v4_address(server, "<server>")?;
    let server_v6 = v6_address(server, "<server>")?;
    let client_v4 = v4_address(client, "<client>")?;
    let client_v6 = v6_address(client, "<client>")?;

    let client_dns_name = match client.addresses("dn").next() {
        None => None,
        Some(el) => {
            let name = el.text("<client> dn address")?;
            if !is_valid_hostname(name) {
                return Err(XmlError::InvalidHostname {
                    what: "client DNS name",
                    value: name.to_owned(),
                });
            }
            // gogoc lower-cases scalar values before exporting them.
            Some(name.to_ascii_lowercase())
        }
    };
    let client_dns_server = match client.child("dns_server") {
        Some(dns) if dns.addresses("ipv6").next().is_some() => Some(v6_address(dns, "<client><dns_server>")?),
        _ => None,
    };

    let prefix = match client.child("router").and_then(|r| r.child("prefix")) {
        None => None,
        Some(p) => {
            let text = p.text("<prefix>")?;
            let (addr, max) = if mode == TunnelMode::V4V6 {
                let a = text.parse::<Ipv4Addr>().map_err(|_| XmlError::InvalidAddress {
                    element: "<prefix>",
                    family: "IPv4",
                    value: text.to_owned(),
                })?;
                (IpAddr::V4(a), 32)
            } else {
                if !is_fully_expanded(text) {
                    return Err(XmlError::PrefixNotExpanded(text.to_owned()));
                }
                let a = text.parse::<Ipv6Addr>().map_err(|_| XmlError::InvalidAddress {
                    element: "<prefix>",
                    family: "IPv6",
                    value: text.to_owned(),
                })?;
                (IpAddr::V6(a), 128)
            };
            Some(OfferedPrefix {
                addr,
                len: prefix_length(p, 1, max)?,
            })
        }
    };

    let keepalive = match client.child("keepalive") {
        None => None,
        Some(ka) => {
            let interval = number_attr(ka, "keepalive", "interval", "keepalive interval")?;
            // The echo target's family is the one the broker declares for it.
            let target = ka
                .children
                .iter()
                .find(|c| {
                    c.name == "address"
                        && c.attr("type")
                            .is_some_and(|t| t.eq_ignore_ascii_case("ipv6") || t.eq_ignore_ascii_case("ipv4"))
                })
                .ok_or(XmlError::MissingAddress {
                    element: "<keepalive>",
                    family: if mode == TunnelMode::V4V6 { "IPv4" } else { "IPv6" },
                })?;
            let address = if target.attr("type").is_some_and(|t| t.eq_ignore_ascii_case("ipv4")) {
                IpAddr::V4(parse_v4(target, "<keepalive>")?)
            } else {
                IpAddr::V6(parse_v6(target, "<keepalive>")?)
            };
            Some(Keepalive { interval, address })
        }
    };

    Ok(Offer {
        mode,
        lifetime,
        server_v4,
        server_v6,
        client_v4,
        client_v6,
        client_dns_name,
        client_dns_server,
        prefix,
        keepalive,
    })
}

/// Reads a redirection body (what follows the `1200 ...` status line) and returns the
/// brokers in the order gogoc would try them ([`redirect_try_order`]). Entries of unknown
/// address types are skipped; names are kept as sent.
pub fn parse_redirect(body: &[u8]) -> Result<Vec<BrokerAddr>, XmlError> {
    let root = parse_document(body)?;
    let entries: Vec<(&Element, String)> = root
        .children
        .iter()
        .filter(|c| c.name == "broker")
        .flat_map(|b| b.children.iter().filter(|c| c.name == "address"))
        .filter_map(|e| {
            let kind = e.attr("type")?.to_ascii_lowercase();
            matches!(kind.as_str(), "ipv4" | "ipv6" | "dn").then_some((e, kind))
        })
        .collect();
    if entries.len() > MAX_BROKERS {
        return Err(XmlError::TooManyBrokers {
            count: entries.len(),
            max: MAX_BROKERS,
        });
    }
    let mut listed = Vec::with_capacity(entries.len());
    for (entry, kind) in entries {
        let text = entry.text("<broker> address")?;
        let len = text.chars().count();
        if len > MAX_BROKER_LEN {
            return Err(XmlError::BrokerTooLong {
                len,
                max: MAX_BROKER_LEN,
            });
        }
        listed.push(match kind.as_str() {
            "ipv4" => BrokerAddr::V4(parse_v4(entry, "<broker>")?),
            "ipv6" => BrokerAddr::V6(parse_v6(entry, "<broker>")?),
            _ if is_valid_hostname(text) => BrokerAddr::Name(text.to_owned()),
            _ => {
                return Err(XmlError::InvalidHostname {
                    what: "redirection broker name",
                    value: text.to_owned(),
                });
            }
        });
    }
    if listed.is_empty() {
        return Err(XmlError::NoBrokers);
    }
    Ok(redirect_try_order(&listed))
}

// ---------------------------------------------------------------------------------------------
// Field helpers

/// The root's `type` attribute as a mode (case-insensitive: gogoc lower-cases it).
fn tunnel_type(root: &Element) -> Result<TunnelMode, XmlError> {
    let value = root.attr("type").ok_or(XmlError::MissingAttribute {
        element: "tunnel",
        attribute: "type",
    })?;
    value.parse().map_err(|_| XmlError::UnknownMode(value.to_owned()))
}

/// The first IPv4 `<address>` child of `parent`, which must exist.
fn v4_address(parent: &Element, label: &'static str) -> Result<Ipv4Addr, XmlError> {
    let el = parent.addresses("ipv4").next().ok_or(XmlError::MissingAddress {
        element: label,
        family: "IPv4",
    })?;
    parse_v4(el, label)
}

/// The first IPv6 `<address>` child of `parent`, which must exist.
fn v6_address(parent: &Element, label: &'static str) -> Result<Ipv6Addr, XmlError> {
    let el = parent.addresses("ipv6").next().ok_or(XmlError::MissingAddress {
        element: label,
        family: "IPv6",
    })?;
    parse_v6(el, label)
}

fn parse_v4(el: &Element, label: &'static str) -> Result<Ipv4Addr, XmlError> {
    let text = el.text(label)?;
    text.parse().map_err(|_| XmlError::InvalidAddress {
        element: label,
        family: "IPv4",
        value: text.to_owned(),
    })
}

fn parse_v6(el: &Element, label: &'static str) -> Result<Ipv6Addr, XmlError> {
    let text = el.text(label)?;
    text.parse().map_err(|_| XmlError::InvalidAddress {
        element: label,
        family: "IPv6",
        value: text.to_owned(),
    })
}

/// A required decimal attribute. Only plain digits: `u32::from_str` would also take `+30`.
fn number_attr(
    el: &Element,
    element: &'static str,
    attribute: &'static str,
    what: &'static str,
) -> Result<u32, XmlError> {
    let value = el
        .attr(attribute)
        .ok_or(XmlError::MissingAttribute { element, attribute })?;
    decimal(value)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| XmlError::InvalidNumber {
            what,
            value: value.to_owned(),
        })
}

/// `<prefix length="N">` with `min <= N <= max`.
fn prefix_length(prefix: &Element, min: u8, max: u8) -> Result<u8, XmlError> {
    let value = prefix.attr("length").ok_or(XmlError::MissingAttribute {
        element: "prefix",
        attribute: "length",
    })?;
    decimal(value)
        .and_then(|n| u8::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| XmlError::InvalidPrefixLength {
            value: value.to_owned(),
            min,
            max,
        })
}

/// 1 to 10 ASCII digits (enough for any `u32`, short enough never to overflow `u64`).
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Bounded document tree

/// One element of a parsed document. Text is kept verbatim (gogoc does not trim it).
#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn new(start: &BytesStart<'_>) -> Result<Self, XmlError> {
        let mut attrs = Vec::new();
        // Checks on: duplicate or unquoted attributes are malformed.
        for attr in start.attributes() {
            let attr = attr.map_err(|e| XmlError::Malformed {
                position: 0,
                reason: e.to_string(),
            })?;
            // Values are raw; a reference would need expanding, which TSP never uses.
            if attr.value.contains('&') {
                return Err(XmlError::Forbidden("entity or character references"));
            }
            attrs.push((attr.key.as_ref().to_owned(), attr.value.into_owned()));
        }
        Ok(Element {
            name: start.name().as_ref().to_owned(),
            attrs,
            text: String::new(),
            children: Vec::new(),
        })
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// `<address>` children whose `type` is `family` (case-insensitive), in order.
    fn addresses<'a>(&'a self, family: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children
            .iter()
            .filter(move |c| c.name == "address" && c.attr("type").is_some_and(|t| t.eq_ignore_ascii_case(family)))
    }

    /// The text of a leaf element.
    fn text(&self, label: &'static str) -> Result<&str, XmlError> {
        if self.children.is_empty() {
            Ok(&self.text)
        } else {
            Err(XmlError::NotText(label))
        }
    }
}

fn is_blank(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Parses a whole document into its root element, which must be `<tunnel>`. Work is bounded
/// by the size, depth and element limits before anything is interpreted.
fn parse_document(input: &[u8]) -> Result<Element, XmlError> {
    if input.len() > MAX_MESSAGE {
        return Err(XmlError::TooLarge {
            len: input.len(),
            max: MAX_MESSAGE,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;

    loop {
        let event = reader.read_event().map_err(|e| XmlError::Malformed {
            position: reader.error_position(),
            reason: e.to_string(),
        })?;
        let (start, empty) = match event {
            Event::Start(s) => (s, false),
            Event::Empty(s) => (s, true),
            Event::End(_) => {
                // quick-xml has already matched the end name against the open element.
                let Some(done) = stack.pop() else {
                    return Err(XmlError::Malformed {
                        position: reader.buffer_position(),
                        reason: "closing tag without an open element".into(),
                    });
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
                continue;
            }
            Event::Text(t) => {
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&t),
                    None if is_blank(&t) => {}
                    None => return Err(XmlError::StrayText(t.into_inner().into_owned())),
                }
                continue;
            }
            Event::Eof => break,
            Event::CData(_) => return Err(XmlError::Forbidden("CDATA sections")),
            Event::Comment(_) => return Err(XmlError::Forbidden("comments")),
            Event::Decl(_) => return Err(XmlError::Forbidden("an XML declaration")),
            Event::PI(_) => return Err(XmlError::Forbidden("processing instructions")),
            Event::DocType(_) => return Err(XmlError::Forbidden("a DOCTYPE")),
            Event::GeneralRef(_) => {
                return Err(XmlError::Forbidden("entity or character references"));
            }
        };
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err(XmlError::TooManyElements { max: MAX_ELEMENTS });
        }
        if stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep { max: MAX_DEPTH });
        }
        let element = Element::new(&start).map_err(|e| match e {
            XmlError::Malformed { reason, .. } => XmlError::Malformed {
                position: reader.buffer_position(),
                reason,
            },
            other => other,
        })?;
        if stack.is_empty() {
            if root.is_some() {
                return Err(XmlError::ExtraRoot(element.name));
            }
            if element.name != "tunnel" {
                return Err(XmlError::WrongRoot(element.name));
            }
        }
        if !empty {
            stack.push(element);
        } else if let Some(parent) = stack.last_mut() {
            parent.children.push(element);
        } else {
            root = Some(element);
        }
    }
    if let Some(open) = stack.pop() {
        return Err(XmlError::Unclosed(open.name));
    }
    root.ok_or(XmlError::NoRoot)
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The create request of the gogoc ↔ tsps capture (gogoc-tsps-anon-udp.txt), 214 bytes.
    const CAPTURE_CREATE: &str = "<tunnel action=\"create\" type=\"v6udpv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">192.0.2.2</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

    /// The tsps offer of the same capture, after its `200 Success\r\n` line: tab-indented,
    /// compressed addresses.
    const CAPTURE_OFFER: &str = "<tunnel action=\"info\" type=\"v6udpv4\" lifetime=\"604800\">\r\n\t<server>\r\n\t\t<address type=\"ipv4\">192.0.2.1</address>\r\n\t\t<address type=\"ipv6\">2001:db8:b::1</address>\r\n\t</server>\r\n\t<client>\r\n\t\t<address type=\"ipv4\">192.0.2.2</address>\r\n\t\t<address type=\"ipv6\">2001:db8:b:0:ffff:c000:202:c703</address>\r\n\t\t<keepalive interval=\"30\">\r\n\t\t\t<address type=\"ipv6\">2001:db8:b::1</address>\r\n\t\t</keepalive>\r\n\t</client>\r\n</tunnel>\r\n";

    /// §4.3 first example (v6udpv4), with its status line; 487 bytes.
    const OFFER_HOST: &str = "200 Success\r\n<tunnel action=\"info\" type=\"v6udpv4\" lifetime=\"604800\">\r\n <server>\r\n  <address type=\"ipv4\">192.0.2.6</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n </server>\r\n <client>\r\n  <address type=\"ipv4\">198.51.100.20</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0005</address>\r\n  <keepalive interval=\"30\">\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

    /// §4.3 router example (v6v4), with its status line; 747 bytes.
    const OFFER_ROUTER: &str = "200 Success\r\n<tunnel action=\"info\" type=\"v6v4\" lifetime=\"604800\">\r\n <server>\r\n  <address type=\"ipv4\">192.0.2.6</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n </server>\r\n <client>\r\n  <address type=\"ipv4\">192.0.2.1</address>\r\n  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0005</address>\r\n  <address type=\"dn\">johnsmith.broker.example.net</address>\r\n  <dns_server>\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0053</address>\r\n  </dns_server>\r\n  <router>\r\n   <prefix length=\"56\">2001:0db8:4000:1200:0000:0000:0000:0000</prefix>\r\n  </router>\r\n  <keepalive interval=\"30\">\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

    /// §4.4 with its status line; 262 bytes.
    const REDIRECT: &str = "1200 Redirection\r\n<tunnel action=\"info\" type=\"v6anyv4\" lifetime=\"1440\">\r\n <broker>\r\n  <address type=\"ipv4\">192.0.2.10</address>\r\n  <address type=\"ipv4\">192.0.2.11</address>\r\n  <address type=\"dn\">anon-montreal.broker.example.net</address>\r\n </broker>\r\n</tunnel>\r\n";

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn host_create(addr: &str, mode: TunnelMode) -> CreateRequest {
        CreateRequest {
            mode,
            proxy: false,
            client_addr: IpAddr::V4(v4(addr)),
            keepalive: Some(30),
            router: None,
        }
    }

    fn offer_host() -> Offer {
        Offer {
            mode: TunnelMode::V6UdpV4,
            lifetime: Some(604800),
            server_v4: v4("192.0.2.6"),
            server_v6: v6("2001:db8:4000::4"),
            client_v4: v4("198.51.100.20"),
            client_v6: v6("2001:db8:4000::5"),
            client_dns_name: None,
            client_dns_server: None,
            prefix: None,
            keepalive: Some(Keepalive {
                interval: 30,
                address: "2001:db8:4000::4".parse().unwrap(),
            }),
        }
    }

    fn offer_router() -> Offer {
        Offer {
            mode: TunnelMode::V6V4,
            client_v4: v4("192.0.2.1"),
            client_dns_name: Some("johnsmith.broker.example.net".into()),
            client_dns_server: Some(v6("2001:db8:4000::53")),
            prefix: Some(OfferedPrefix {
                addr: "2001:db8:4000:1200::".parse().unwrap(),
                len: 56,
            }),
            ..offer_host()
        }
    }

    fn info_body(full: &str) -> &str {
        full.strip_prefix("200 Success\r\n").unwrap()
    }

    // --- create ---------------------------------------------------------------------------

    #[test]
    fn create_minimal_is_217_bytes() {
        let xml = build_create(&host_create("192.168.1.10", TunnelMode::V6AnyV4));
        assert_eq!(xml.len(), 217);
        assert_eq!(
            xml,
            "<tunnel action=\"create\" type=\"v6anyv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">192.168.1.10</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n"
        );
        assert_eq!(build_create(&host_create("192.0.2.1", TunnelMode::V6AnyV4)).len(), 214);
    }

    #[test]
    fn create_matches_capture() {
        let xml = build_create(&host_create("192.0.2.2", TunnelMode::V6UdpV4));
        assert_eq!(xml.len(), 214);
        assert_eq!(xml, CAPTURE_CREATE);
        assert_eq!(
            parse_create(CAPTURE_CREATE.as_bytes()),
            Ok(host_create("192.0.2.2", TunnelMode::V6UdpV4))
        );
    }

    /// §4.2 names no DNS servers for its 405-byte router example; with the minimal request's
    /// 192.168.1.10 / keepalive 30, two 15-character names give exactly 405.
    #[test]
    fn create_router_is_405_bytes() {
        let req = CreateRequest {
            router: Some(RouterRequest {
                prefix_len: 64,
                dns_names: vec!["ns1.example.net".into(), "ns2.example.net".into()],
            }),
            ..host_create("192.168.1.10", TunnelMode::V6AnyV4)
        };
        let xml = build_create(&req);
        assert_eq!(xml.len(), 405);
        assert!(xml.contains(
            "  </keepalive>\r\n  <router>\r\n   <prefix length=\"64\"/>\r\n   <dns_server>\r\n     <address type=\"dn\">ns1.example.net</address>\r\n     <address type=\"dn\">ns2.example.net</address>\r\n   </dns_server>\r\n  </router>\r\n </client>\r\n"
        ));
        assert_eq!(parse_create(xml.as_bytes()), Ok(req));
    }

    #[test]
    fn create_variants() {
        // v4v6: IPv6 client address, IPv4 keepalive placeholder, default prefix 24.
        let req = CreateRequest {
            mode: TunnelMode::V4V6,
            proxy: true,
            client_addr: IpAddr::V6(v6("2001:db8::2")),
            keepalive: Some(15),
            router: Some(RouterRequest {
                prefix_len: 0,
                dns_names: vec![],
            }),
        };
        let xml = build_create(&req);
        assert_eq!(
            xml,
            "<tunnel action=\"create\" type=\"v4v6\" proxy=\"yes\">\r\n <client>\r\n  <address type=\"ipv6\">2001:db8::2</address>\r\n  <keepalive interval=\"15\">\r\n    <address type=\"ipv4\">127.0.0.1</address>\r\n  </keepalive>\r\n  <router>\r\n   <prefix length=\"24\"/>\r\n  </router>\r\n </client>\r\n</tunnel>\r\n"
        );
        let parsed = parse_create(xml.as_bytes()).unwrap();
        assert_eq!(parsed.router.unwrap().prefix_len, 24);
        // No keepalive block; v6 default prefix 48.
        let req = CreateRequest {
            keepalive: None,
            router: Some(RouterRequest {
                prefix_len: 0,
                dns_names: vec![],
            }),
            ..host_create("192.0.2.1", TunnelMode::V6V4)
        };
        let xml = build_create(&req);
        assert!(!xml.contains("keepalive"));
        assert!(xml.contains("<prefix length=\"48\"/>"));
        assert_eq!(ACCEPT.len(), 35);
    }

    #[test]
    fn create_accepts_layout_variants() {
        let xml = "\n<tunnel proxy=\"NO\"  type=\"V6ANYV4\"\taction=\"create\" >\n\t<client>\t<keepalive interval=\"20\"><address type=\"ipv6\">::</address></keepalive>\n<address type=\"IPV4\">10.1.2.3</address><router><prefix length='56'></prefix><dns_server><address type=\"dn\">a.example</address></dns_server></router><unknown x=\"1\"><deep/></unknown></client></tunnel>\r\n";
        let req = parse_create(xml.as_bytes()).unwrap();
        assert_eq!(req.mode, TunnelMode::V6AnyV4);
        assert!(!req.proxy);
        assert_eq!(req.client_addr, IpAddr::V4(v4("10.1.2.3")));
        assert_eq!(req.keepalive, Some(20));
        assert_eq!(
            req.router,
            Some(RouterRequest {
                prefix_len: 56,
                dns_names: vec!["a.example".into()]
            })
        );
    }

    #[test]
    fn create_rejections() {
        let c = |s: &str| parse_create(s.as_bytes());
        let with = |from: &str, to: &str| c(&CAPTURE_CREATE.replacen(from, to, 1));
        assert_eq!(
            with("action=\"create\"", "action=\"info\""),
            Err(XmlError::WrongAction("info".into()))
        );
        assert_eq!(
            with("action=\"create\" ", ""),
            Err(XmlError::MissingAttribute {
                element: "tunnel",
                attribute: "action"
            })
        );
        assert_eq!(with("v6udpv4", "v6v5"), Err(XmlError::UnknownMode("v6v5".into())));
        assert!(matches!(
            with("\"no\"", "\"maybe\""),
            Err(XmlError::InvalidAttribute { .. })
        ));
        assert_eq!(
            with(">192.0.2.2<", "> 192.0.2.2<"),
            Err(XmlError::InvalidAddress {
                element: "<client>",
                family: "IPv4",
                value: " 192.0.2.2".into()
            })
        );
        assert_eq!(
            with("type=\"ipv4\"", "type=\"ipv6\""),
            Err(XmlError::MissingAddress {
                element: "<client>",
                family: "IPv4"
            })
        );
        assert_eq!(
            with("interval=\"30\"", "interval=\"30s\""),
            Err(XmlError::InvalidNumber {
                what: "keepalive interval",
                value: "30s".into()
            })
        );
        assert_eq!(
            c("<tunnel action=\"create\" type=\"v6v4\"/>"),
            Err(XmlError::MissingElement("<client> element"))
        );
        let router = |body: &str| {
            with(
                "  </keepalive>\r\n",
                &format!("  </keepalive>\r\n  <router>{body}</router>\r\n"),
            )
        };
        assert_eq!(router(""), Err(XmlError::MissingElement("<prefix> inside <router>")));
        assert!(matches!(
            router("<prefix length=\"129\"/>"),
            Err(XmlError::InvalidPrefixLength { .. })
        ));
        assert!(matches!(
            router("<prefix length=\"64\"/><dns_server><address type=\"dn\">bad name</address></dns_server>"),
            Err(XmlError::InvalidHostname { .. })
        ));
    }

    // --- info -----------------------------------------------------------------------------

    #[test]
    fn info_matches_spec_examples() {
        let host = format!("200 Success\r\n{}", build_info(&offer_host()));
        assert_eq!(host.len(), 487);
        assert_eq!(host, OFFER_HOST);
        let router = format!("200 Success\r\n{}", build_info(&offer_router()));
        assert_eq!(router.len(), 747);
        assert_eq!(router, OFFER_ROUTER);
        assert_eq!(parse_info(info_body(OFFER_HOST).as_bytes()), Ok(offer_host()));
        assert_eq!(parse_info(info_body(OFFER_ROUTER).as_bytes()), Ok(offer_router()));
    }

    #[test]
    fn info_parses_capture() {
        let offer = parse_info(CAPTURE_OFFER.as_bytes()).unwrap();
        assert_eq!(
            offer,
            Offer {
                mode: TunnelMode::V6UdpV4,
                lifetime: Some(604800),
                server_v4: v4("192.0.2.1"),
                server_v6: v6("2001:db8:b::1"),
                client_v4: v4("192.0.2.2"),
                client_v6: v6("2001:db8:b:0:ffff:c000:202:c703"),
                client_dns_name: None,
                client_dns_server: None,
                prefix: None,
                keepalive: Some(Keepalive {
                    interval: 30,
                    address: "2001:db8:b::1".parse().unwrap()
                }),
            }
        );
        // Re-emitted in our layout it is a §4.3-style document (423 → expanded form).
        assert!(build_info(&offer).contains("2001:0db8:000b:0000:ffff:c000:0202:c703"));
    }

    #[test]
    fn info_accepts_variants() {
        // Upper case, attribute order, no lifetime, no keepalive, unknown bits, action ignored.
        let xml = "<tunnel type=\"V6V4\" mtu=\"1280\" action=\"whatever\">\r\n<server><address type=\"IPv6\">2001:DB8::4</address><router protocol=\"rip\"/><address type=\"ipv4\">192.0.2.6</address></server>\r\n<client><address type=\"ns\">x.example</address><address type=\"ipv4\">192.0.2.1</address><address type=\"ipv6\">2001:0DB8:0:0:0:0:0:5</address><dns_server><address type=\"ipv4\">192.0.2.53</address></dns_server><router><prefix length=\"48\">2001:0DB8:4000:0000:0000:0000:0000:0000</prefix></router><future><a><b/></a></future></client></tunnel>";
        let offer = parse_info(xml.as_bytes()).unwrap();
        assert_eq!(offer.mode, TunnelMode::V6V4);
        assert_eq!(offer.lifetime, None);
        assert_eq!(offer.server_v6, v6("2001:db8::4"));
        assert_eq!(offer.client_v6, v6("2001:db8::5"));
        assert_eq!(offer.client_dns_name, None);
        assert_eq!(offer.client_dns_server, None);
        assert_eq!(
            offer.prefix,
            Some(OfferedPrefix {
                addr: "2001:db8:4000::".parse().unwrap(),
                len: 48
            })
        );
        assert_eq!(offer.keepalive, None);
        // DNS name is lower-cased; v4v6 carries an IPv4 prefix and keepalive target.
        let xml = OFFER_ROUTER
            .replace("type=\"v6v4\"", "type=\"v4v6\"")
            .replace("johnsmith", "JohnSmith")
            .replace(
                "<prefix length=\"56\">2001:0db8:4000:1200:0000:0000:0000:0000</prefix>",
                "<prefix length=\"24\">198.51.100.0</prefix>",
            )
            .replace(
                "<address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>\r\n  </keepalive>",
                "<address type=\"ipv4\">192.0.2.6</address>\r\n  </keepalive>",
            );
        let offer = parse_info(info_body(&xml).as_bytes()).unwrap();
        assert_eq!(offer.client_dns_name.as_deref(), Some("johnsmith.broker.example.net"));
        assert_eq!(
            offer.prefix,
            Some(OfferedPrefix {
                addr: IpAddr::V4(v4("198.51.100.0")),
                len: 24
            })
        );
        assert_eq!(offer.keepalive.unwrap().address, IpAddr::V4(v4("192.0.2.6")));
    }

    #[test]
    fn info_rejections() {
        let body = info_body(OFFER_ROUTER);
        let with = |from: &str, to: &str| {
            assert!(body.contains(from), "{from}");
            parse_info(body.replacen(from, to, 1).as_bytes())
        };
        let p = |s: &str| parse_info(s.as_bytes());
        assert_eq!(p(""), Err(XmlError::NoRoot));
        assert_eq!(p(" \r\n"), Err(XmlError::NoRoot));
        assert_eq!(p("<info type=\"v6v4\"/>"), Err(XmlError::WrongRoot("info".into())));
        assert_eq!(with("v6v4", "v6anyv4"), Err(XmlError::NotConcrete(TunnelMode::V6AnyV4)));
        assert_eq!(with("v6v4", "ipip"), Err(XmlError::UnknownMode("ipip".into())));
        assert_eq!(
            with(" type=\"v6v4\"", ""),
            Err(XmlError::MissingAttribute {
                element: "tunnel",
                attribute: "type"
            })
        );
        assert!(matches!(with("604800", "1 week"), Err(XmlError::InvalidNumber { .. })));
        // Each endpoint address missing or malformed.
        assert_eq!(
            with("  <address type=\"ipv4\">192.0.2.6</address>\r\n", ""),
            Err(XmlError::MissingAddress {
                element: "<server>",
                family: "IPv4"
            })
        );
        assert_eq!(
            with(">192.0.2.6<", ">192.0.2.256<"),
            Err(XmlError::InvalidAddress {
                element: "<server>",
                family: "IPv4",
                value: "192.0.2.256".into()
            })
        );
        assert!(matches!(
            with(">2001:0db8:4000:0000:0000:0000:0000:0004<", ">2001:db8::4 <"),
            Err(XmlError::InvalidAddress {
                element: "<server>",
                family: "IPv6",
                ..
            })
        ));
        assert!(matches!(
            with(">192.0.2.1<", ">\t192.0.2.1<"),
            Err(XmlError::InvalidAddress {
                element: "<client>",
                family: "IPv4",
                ..
            })
        ));
        assert!(matches!(
            with(">2001:0db8:4000:0000:0000:0000:0000:0005<", ">fe80::1%eth0<"),
            Err(XmlError::InvalidAddress {
                element: "<client>",
                family: "IPv6",
                ..
            })
        ));
        assert_eq!(
            with(
                "  <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0005</address>\r\n",
                ""
            ),
            Err(XmlError::MissingAddress {
                element: "<client>",
                family: "IPv6"
            })
        );
        assert_eq!(
            with(">192.0.2.1<", "><b>192.0.2.1</b><"),
            Err(XmlError::NotText("<client>"))
        );
        assert!(matches!(with("<server>", "<srv>"), Err(XmlError::Malformed { .. })));
        // Prefix: compressed, bad length.
        assert_eq!(
            with("2001:0db8:4000:1200:0000:0000:0000:0000", "2001:db8:4000:1200::"),
            Err(XmlError::PrefixNotExpanded("2001:db8:4000:1200::".into()))
        );
        for bad in ["0", "129", "x", "", "+56", "00000000000000000056"] {
            assert!(
                matches!(
                    with("length=\"56\"", &format!("length=\"{bad}\"")),
                    Err(XmlError::InvalidPrefixLength { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            with("length=\"56\"", ""),
            Err(XmlError::MissingAttribute { .. })
        ));
        // Keepalive.
        assert_eq!(
            with("interval=\"30\"", "interval=\"thirty\""),
            Err(XmlError::InvalidNumber {
                what: "keepalive interval",
                value: "thirty".into()
            })
        );
        assert_eq!(
            with("interval=\"30\"", "interval=\"4294967296\""),
            Err(XmlError::InvalidNumber {
                what: "keepalive interval",
                value: "4294967296".into()
            })
        );
        assert!(matches!(
            with(
                "<keepalive interval=\"30\">\r\n   <address type=\"ipv6\">2001:0db8:4000:0000:0000:0000:0000:0004</address>",
                "<keepalive interval=\"30\">"
            ),
            Err(XmlError::MissingAddress {
                element: "<keepalive>",
                ..
            })
        ));
        // Client DNS name and server.
        assert!(matches!(
            with("johnsmith.broker", "john smith.broker"),
            Err(XmlError::InvalidHostname { .. })
        ));
        assert!(matches!(
            with(">2001:0db8:4000:0000:0000:0000:0000:0053<", ">192.0.2.53<"),
            Err(XmlError::InvalidAddress {
                element: "<client><dns_server>",
                ..
            })
        ));
    }

    #[test]
    fn forbidden_markup_and_limits() {
        let body = info_body(OFFER_HOST);
        let inject = |what: &str| parse_info(body.replacen(" <server>", what, 1).as_bytes());
        assert_eq!(inject("<!-- hi --> <server>"), Err(XmlError::Forbidden("comments")));
        assert_eq!(
            inject(" <server><![CDATA[x]]>"),
            Err(XmlError::Forbidden("CDATA sections"))
        );
        assert_eq!(
            inject("<?php x?> <server>"),
            Err(XmlError::Forbidden("processing instructions"))
        );
        assert_eq!(
            inject(" <server>&amp;"),
            Err(XmlError::Forbidden("entity or character references"))
        );
        assert_eq!(
            inject(" <server>&#65;"),
            Err(XmlError::Forbidden("entity or character references"))
        );
        assert_eq!(
            parse_info(body.replacen("type=\"v6udpv4\"", "type=\"v6&amp;v4\"", 1).as_bytes()),
            Err(XmlError::Forbidden("entity or character references"))
        );
        let with_prefix = |p: &str| parse_info(format!("{p}{body}").as_bytes());
        assert_eq!(
            with_prefix("<?xml version=\"1.0\"?>\r\n"),
            Err(XmlError::Forbidden("an XML declaration"))
        );
        assert_eq!(
            with_prefix("<!DOCTYPE tunnel [<!ENTITY a \"b\">]>\r\n"),
            Err(XmlError::Forbidden("a DOCTYPE"))
        );
        assert_eq!(
            with_prefix("200 Success\r\n"),
            Err(XmlError::StrayText("200 Success\r\n".into()))
        );
        assert_eq!(
            parse_info(format!("{body}x").as_bytes()),
            Err(XmlError::StrayText("\r\nx".into()))
        );
        assert_eq!(
            parse_info(format!("{body}<tunnel/>").as_bytes()),
            Err(XmlError::ExtraRoot("tunnel".into()))
        );
        assert_eq!(
            parse_info(&body.as_bytes()[..body.len() - 11]),
            Err(XmlError::Unclosed("tunnel".into()))
        );
        assert!(matches!(
            parse_info(body.replacen("</server>", "</srv>", 1).as_bytes()),
            Err(XmlError::Malformed { .. })
        ));
        assert!(matches!(
            parse_info(body.replacen("type=\"v6udpv4\"", "type=v6udpv4", 1).as_bytes()),
            Err(XmlError::Malformed { .. })
        ));
        assert!(matches!(
            parse_info(body.replacen("type=\"v6udpv4\"", "type=\"a\" type=\"b\"", 1).as_bytes()),
            Err(XmlError::Malformed { .. })
        ));
        assert_eq!(parse_info(b"<tunnel \xff/>"), Err(XmlError::NotUtf8));
        // Depth: 8 levels are fine, 9 are not.
        let nest = |n: usize| {
            let mut s = String::from("<tunnel type=\"v6v4\">");
            s.push_str(&"<a>".repeat(n - 1));
            s.push_str(&"</a>".repeat(n - 1));
            s.push_str("</tunnel>");
            parse_info(s.as_bytes())
        };
        assert_eq!(nest(8), Err(XmlError::MissingElement("<server> element")));
        assert_eq!(nest(9), Err(XmlError::TooDeep { max: MAX_DEPTH }));
        // A deeply nested bomb fails on the depth limit, not after building anything big.
        let bomb = "<tunnel>".to_string() + &"<a>".repeat(1000);
        assert_eq!(parse_info(bomb.as_bytes()), Err(XmlError::TooDeep { max: MAX_DEPTH }));
        // Element count.
        let many = |n: usize| format!("<tunnel>{}</tunnel>", "<a/>".repeat(n));
        assert_eq!(
            parse_info(many(255).as_bytes()),
            Err(XmlError::MissingAttribute {
                element: "tunnel",
                attribute: "type"
            })
        );
        assert_eq!(
            parse_info(many(256).as_bytes()),
            Err(XmlError::TooManyElements { max: MAX_ELEMENTS })
        );
        // Size.
        let big = format!("{body}{}", " ".repeat(MAX_MESSAGE + 1 - body.len()));
        assert_eq!(
            parse_info(big.as_bytes()),
            Err(XmlError::TooLarge {
                len: MAX_MESSAGE + 1,
                max: MAX_MESSAGE
            })
        );
        assert!(parse_info(&big.as_bytes()[..MAX_MESSAGE]).is_ok());
    }

    // --- redirect -------------------------------------------------------------------------

    #[test]
    fn redirect_matches_spec_example() {
        let listed = vec![
            BrokerAddr::V4(v4("192.0.2.10")),
            BrokerAddr::V4(v4("192.0.2.11")),
            BrokerAddr::Name("anon-montreal.broker.example.net".into()),
        ];
        let full = format!("1200 Redirection\r\n{}", build_redirect(&listed));
        assert_eq!(full.len(), 262);
        assert_eq!(full, REDIRECT);
        let body = REDIRECT.strip_prefix("1200 Redirection\r\n").unwrap();
        assert_eq!(
            parse_redirect(body.as_bytes()),
            Ok(vec![
                BrokerAddr::V4(v4("192.0.2.11")),
                BrokerAddr::V4(v4("192.0.2.10")),
                BrokerAddr::Name("anon-montreal.broker.example.net".into()),
            ])
        );
    }

    #[test]
    fn redirect_order_groups_by_type_reversed() {
        let xml = "<tunnel><broker><address type=\"dn\">a.example</address><address type=\"ipv6\">2001:db8::1</address><address type=\"ipv4\">192.0.2.1</address><address type=\"dn\">b.example</address><address type=\"ipv6\">2001:db8::2</address><address type=\"ipv4\">192.0.2.2</address><address type=\"ns\">skipped.example</address></broker></tunnel>";
        assert_eq!(
            parse_redirect(xml.as_bytes()),
            Ok(vec![
                BrokerAddr::V4(v4("192.0.2.2")),
                BrokerAddr::V4(v4("192.0.2.1")),
                BrokerAddr::V6(v6("2001:db8::2")),
                BrokerAddr::V6(v6("2001:db8::1")),
                BrokerAddr::Name("b.example".into()),
                BrokerAddr::Name("a.example".into()),
            ])
        );
    }

    #[test]
    fn redirect_rejections() {
        let doc = |entries: &str| format!("<tunnel><broker>{entries}</broker></tunnel>");
        let p = |entries: &str| parse_redirect(doc(entries).as_bytes());
        assert_eq!(p(""), Err(XmlError::NoBrokers));
        assert_eq!(p("<address type=\"ns\">x.example</address>"), Err(XmlError::NoBrokers));
        assert_eq!(parse_redirect(b"<tunnel/>"), Err(XmlError::NoBrokers));
        let entry = "<address type=\"ipv4\">192.0.2.1</address>";
        assert_eq!(p(&entry.repeat(50)).map(|l| l.len()), Ok(50));
        assert_eq!(
            p(&entry.repeat(51)),
            Err(XmlError::TooManyBrokers { count: 51, max: 50 })
        );
        let long = "a.".repeat(130) + "example";
        assert!(long.len() > MAX_BROKER_LEN);
        assert_eq!(
            p(&format!("<address type=\"dn\">{long}</address>")),
            Err(XmlError::BrokerTooLong {
                len: long.len(),
                max: MAX_BROKER_LEN
            })
        );
        assert!(matches!(
            p("<address type=\"ipv4\">192.0.2</address>"),
            Err(XmlError::InvalidAddress {
                element: "<broker>",
                family: "IPv4",
                ..
            })
        ));
        assert!(matches!(
            p("<address type=\"ipv6\">[2001:db8::1]</address>"),
            Err(XmlError::InvalidAddress {
                element: "<broker>",
                family: "IPv6",
                ..
            })
        ));
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a_b.example",
            "192.0.2.300",
            "a b",
            "x.example:3653",
        ] {
            assert!(
                matches!(
                    p(&format!("<address type=\"dn\">{bad}</address>")),
                    Err(XmlError::InvalidHostname { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(parse_redirect(b"<broker/>"), Err(XmlError::WrongRoot("broker".into())));
    }

    #[test]
    fn helpers() {
        assert_eq!(expand_v6(v6("2001:db8::1")), "2001:0db8:0000:0000:0000:0000:0000:0001");
        assert_eq!(
            expand_v6(Ipv6Addr::UNSPECIFIED),
            "0000:0000:0000:0000:0000:0000:0000:0000"
        );
        assert!(is_fully_expanded("2001:0DB8:0000:0000:0000:0000:0000:0001"));
        assert!(!is_fully_expanded("2001:db8:0000:0000:0000:0000:0000:0001"));
        assert!(!is_fully_expanded("2001:0db8:0000:0000:0000:0000:0000"));
        assert!(!is_fully_expanded("2001:0db8:0000:0000:0000:0000:0000:0001:0000"));
        assert!(!is_fully_expanded("0000:0000:0000:0000:0000:ffff:192.0.2.1"));
        assert!(!is_fully_expanded(""));
        assert!(is_valid_hostname("broker.example.net."));
        assert!(is_valid_hostname("localhost"));
        assert!(is_valid_hostname("1.example"));
        assert!(!is_valid_hostname("."));
        assert!(!is_valid_hostname(&"a".repeat(64)));
        assert!(!is_valid_hostname("a-.example"));
    }

    // --- properties -----------------------------------------------------------------------

    fn hostname() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,6}[a-z0-9])?){0,3}\\.[a-z]{2,6}"
    }

    fn any_v4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    fn any_v6() -> impl Strategy<Value = Ipv6Addr> {
        any::<u128>().prop_map(Ipv6Addr::from)
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![any_v4().prop_map(IpAddr::V4), any_v6().prop_map(IpAddr::V6)]
    }

    fn any_offer() -> impl Strategy<Value = Offer> {
        let mode = prop_oneof![
            Just(TunnelMode::V6V4),
            Just(TunnelMode::V6UdpV4),
            Just(TunnelMode::V4V6)
        ];
        (mode, any::<bool>(), (1u8..=128, any_v6()), (1u8..=32, any_v4())).prop_flat_map(
            |(mode, with_prefix, p6, p4)| {
                let prefix = with_prefix.then(|| {
                    if mode == TunnelMode::V4V6 {
                        OfferedPrefix {
                            addr: IpAddr::V4(p4.1),
                            len: p4.0,
                        }
                    } else {
                        OfferedPrefix {
                            addr: IpAddr::V6(p6.1),
                            len: p6.0,
                        }
                    }
                });
                (
                    (
                        proptest::option::of(any::<u32>()),
                        any_v4(),
                        any_v6(),
                        any_v4(),
                        any_v6(),
                    ),
                    proptest::option::of(hostname()),
                    proptest::option::of(any_v6()),
                    proptest::option::of((any::<u32>(), any_ip())),
                )
                    .prop_map(move |((lifetime, sv4, sv6, cv4, cv6), dn, dns, ka)| Offer {
                        mode,
                        lifetime,
                        server_v4: sv4,
                        server_v6: sv6,
                        client_v4: cv4,
                        client_v6: cv6,
                        client_dns_name: dn,
                        client_dns_server: dns,
                        prefix,
                        keepalive: ka.map(|(interval, address)| Keepalive { interval, address }),
                    })
            },
        )
    }

    fn any_create() -> impl Strategy<Value = CreateRequest> {
        let mode = prop::sample::select(TunnelMode::ALL.to_vec());
        (
            mode,
            any::<bool>(),
            any_v4(),
            any_v6(),
            proptest::option::of(any::<u32>()),
        )
            .prop_flat_map(|(mode, proxy, a4, a6, keepalive)| {
                let v4v6 = mode == TunnelMode::V4V6;
                let max = if v4v6 { 32 } else { 128 };
                proptest::option::of((1u8..=max, prop::collection::vec(hostname(), 0..4))).prop_map(move |router| {
                    CreateRequest {
                        mode,
                        proxy,
                        client_addr: if v4v6 { IpAddr::V6(a6) } else { IpAddr::V4(a4) },
                        keepalive,
                        router: router.map(|(prefix_len, dns_names)| RouterRequest { prefix_len, dns_names }),
                    }
                })
            })
    }

    fn any_broker() -> impl Strategy<Value = BrokerAddr> {
        prop_oneof![
            any_v4().prop_map(BrokerAddr::V4),
            any_v6().prop_map(BrokerAddr::V6),
            hostname().prop_map(BrokerAddr::Name),
        ]
    }

    /// XML-ish noise: far more likely than random bytes to reach the deeper code paths.
    fn xmlish() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                Just("<tunnel type=\"v6v4\">".to_string()),
                Just("</tunnel>".to_string()),
                Just("<server>".to_string()),
                Just("</server>".to_string()),
                Just("<client>".to_string()),
                Just("</client>".to_string()),
                Just("<address type=\"ipv4\">".to_string()),
                Just("<address type=\"ipv6\">".to_string()),
                Just("<address type=\"dn\">".to_string()),
                Just("</address>".to_string()),
                Just("<router><prefix length=\"48\">".to_string()),
                Just("<keepalive interval=\"5\">".to_string()),
                Just("<broker>".to_string()),
                "[<>/a-z0-9\"=:. \r\n\t&;!?\\[\\]-]{0,12}",
            ],
            0..60,
        )
        .prop_map(|parts| parts.concat().into_bytes())
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..5000)) {
            let _ = parse_info(&bytes);
            let _ = parse_create(&bytes);
            let _ = parse_redirect(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_xmlish(bytes in xmlish()) {
            let _ = parse_info(&bytes);
            let _ = parse_create(&bytes);
            let _ = parse_redirect(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_mutated_documents(
            which in 0usize..4,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let base = [info_body(OFFER_ROUTER), CAPTURE_OFFER, CAPTURE_CREATE, REDIRECT];
            let mut doc = base[which].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let i = at.index(doc.len() + 1);
                match op {
                    0 if i < doc.len() => doc[i] = byte,
                    1 => doc.insert(i, byte),
                    _ if i < doc.len() => { doc.remove(i); }
                    _ => {}
                }
            }
            let _ = parse_info(&doc);
            let _ = parse_create(&doc);
            let _ = parse_redirect(&doc);
        }

        #[test]
        fn info_round_trips(offer in any_offer()) {
            prop_assert_eq!(parse_info(build_info(&offer).as_bytes()), Ok(offer));
        }

        #[test]
        fn create_round_trips(req in any_create()) {
            prop_assert_eq!(parse_create(build_create(&req).as_bytes()), Ok(req));
        }

        #[test]
        // 40 long entries still fit in MAX_MESSAGE; the 50-entry limit is tested above.
        fn redirect_round_trips(list in prop::collection::vec(any_broker(), 1..=40)) {
            let parsed = parse_redirect(build_redirect(&list).as_bytes());
            prop_assert_eq!(parsed, Ok(redirect_try_order(&list)));
        }
    }
}
