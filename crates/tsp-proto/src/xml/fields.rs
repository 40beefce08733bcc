//! Typed fields out of the document tree: addresses, numbers, prefix lengths (docs/tsp-wire.md §4.3).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::tree::*;
use super::*;
use crate::types::TunnelMode;

/// The root's `type` attribute as a mode (case-insensitive: gogoc lower-cases it).
pub(super) fn tunnel_type(root: &Element) -> Result<TunnelMode, XmlError> {
    let value = root.attr("type").ok_or(XmlError::MissingAttribute {
        element: "tunnel",
        attribute: "type",
    })?;
    value.parse().map_err(|_| XmlError::UnknownMode(value.to_owned()))
}

/// The first IPv4 `<address>` child of `parent`, which must exist.
pub(super) fn v4_address(parent: &Element, label: &'static str) -> Result<Ipv4Addr, XmlError> {
    let el = parent.addresses("ipv4").next().ok_or(XmlError::MissingAddress {
        element: label,
        family: "IPv4",
    })?;
    parse_v4(el, label)
}

/// The first IPv6 `<address>` child of `parent`, which must exist.
pub(super) fn v6_address(parent: &Element, label: &'static str) -> Result<Ipv6Addr, XmlError> {
    let el = parent.addresses("ipv6").next().ok_or(XmlError::MissingAddress {
        element: label,
        family: "IPv6",
    })?;
    parse_v6(el, label)
}

pub(super) fn parse_v4(el: &Element, label: &'static str) -> Result<Ipv4Addr, XmlError> {
    let text = el.text(label)?;
    text.parse().map_err(|_| XmlError::InvalidAddress {
        element: label,
        family: "IPv4",
        value: text.to_owned(),
    })
}

pub(super) fn parse_v6(el: &Element, label: &'static str) -> Result<Ipv6Addr, XmlError> {
    let text = el.text(label)?;
    text.parse().map_err(|_| XmlError::InvalidAddress {
        element: label,
        family: "IPv6",
        value: text.to_owned(),
    })
}

/// A required decimal attribute. Only plain digits: `u32::from_str` would also take `+30`.
pub(super) fn number_attr(
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
pub(super) fn prefix_length(prefix: &Element, min: u8, max: u8) -> Result<u8, XmlError> {
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
pub(super) fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
