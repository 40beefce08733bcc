//! Reading the documents into values, as wide as real peers write them (docs/tsp-wire.md §4.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::fields::*;
use super::tree::*;
use super::*;
use crate::types::{MAX_BROKERS, TunnelMode};

/// Reads a `create` request (broker side). Accepts gogoc's exact bytes and equivalent
/// layouts (attribute order, blanks between elements, self-closing or not); `action` must
/// be `create`. The client address is the one of the family the mode needs (IPv4, or IPv6
/// for `v4v6`); the keepalive target the client names is ignored (it is always a
/// placeholder).
pub fn parse_create(xml: &[u8]) -> Result<CreateRequest, XmlError> {
    let root = parse_document(xml)?;
    expect_action(&root, "create")?;
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

/// Reads the client's `accept` (broker side): a `<tunnel>` document whose `action` is
/// `accept`, in any case as for `create`. gogoc sends exactly [`ACCEPT`]; what the element
/// holds is ignored, since nothing in it is used.
pub fn parse_accept(xml: &[u8]) -> Result<(), XmlError> {
    expect_action(&parse_document(xml)?, "accept")
}

fn expect_action(root: &Element, expected: &'static str) -> Result<(), XmlError> {
    let action = root.attr("action").ok_or(XmlError::MissingAttribute {
        element: "tunnel",
        attribute: "action",
    })?;
    if action.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(XmlError::WrongAction {
            action: action.to_owned(),
            expected,
        })
    }
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
