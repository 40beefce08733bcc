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

mod build;
mod fields;
mod parse;
#[cfg(test)]
mod tests;
mod tree;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::TunnelMode;

pub use build::{
    build_create, build_info, build_redirect, expand_v6, is_fully_expanded, is_valid_hostname, redirect_try_order,
};
pub use parse::{parse_accept, parse_create, parse_info, parse_redirect};

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
    /// A request whose `action` is not the one expected (`create`, or `accept` after an offer).
    #[error("the request's action is {action:?}, expected {expected:?}")]
    WrongAction { action: String, expected: &'static str },
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
