//! The `Config`, `Ip6Config` and `Ip4Config` dictionaries NetworkManager reads from a VPN
//! plugin (docs/nm-plugin.md §2), built from a negotiated tunnel. Pure: no D-Bus here.
//!
//! NetworkManager silently ignores a key whose variant has another type, so every value is
//! built with the exact D-Bus type it expects: IPv4 addresses are `u` holding the address
//! bytes in memory order (`u32::from_ne_bytes`), IPv6 addresses `ay` of 16 bytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zbus::zvariant::Value;

use tsp_proto::types::TunnelMode;
use tsp_proto::xml::Offer;

/// A signal's dictionary (`a{sv}`).
pub type Dict = HashMap<&'static str, Value<'static>>;

/// NetworkManager's encoding of an IPv4 address: the `u32` whose memory holds the octets.
pub fn v4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn v6(a: Ipv6Addr) -> Value<'static> {
    Value::from(a.octets().to_vec())
}

/// What NetworkManager needs to know about one tunnel, besides the offer.
#[derive(Debug, Clone)]
pub struct TunnelReport<'a> {
    pub ifname: &'a str,
    pub offer: &'a Offer,
    /// The broker's outer address (the `gateway` NetworkManager routes around the tunnel).
    pub broker: IpAddr,
    /// The configured server string, for the banner.
    pub server: &'a str,
    pub mtu: u16,
    /// The authentication that was used, for the banner.
    pub mechanism: &'a str,
    /// Router mode: where the delegated prefix is advertised.
    pub lan_interface: Option<&'a str>,
}

impl TunnelReport<'_> {
    fn carries_v4(&self) -> bool {
        self.offer.mode == TunnelMode::V4V6
    }

    /// `Config`: the device, the broker, which families follow, and the banner.
    pub fn config(&self) -> Dict {
        let mut d = Dict::new();
        d.insert("tundev", Value::from(self.ifname.to_owned()));
        d.insert(
            "gateway",
            match self.broker {
                IpAddr::V4(a) => Value::from(v4(a)),
                IpAddr::V6(a) => v6(a),
            },
        );
        d.insert("mtu", Value::from(u32::from(self.mtu)));
        d.insert("has-ip4", Value::from(self.carries_v4()));
        d.insert("has-ip6", Value::from(!self.carries_v4()));
        // We renegotiate by ourselves after roaming, keepalive loss or a broker restart.
        d.insert("can-persist", Value::from(true));
        d.insert("banner", Value::from(self.banner()));
        d
    }

    /// `Ip6Config` for the IPv6-over-IPv4 modes: our address with the broker as peer, and
    /// the broker's DNS server when it gave one.
    pub fn ip6_config(&self) -> Dict {
        let o = self.offer;
        let mut d = Dict::new();
        d.insert("address", v6(o.client_v6));
        d.insert("prefix", Value::from(128u32));
        d.insert("ptp", v6(o.server_v6));
        if let Some(dns) = o.client_dns_server {
            d.insert("dns", Value::from(vec![dns.octets().to_vec()]));
        }
        if let Some(name) = &o.client_dns_name
            && let Some((_, domain)) = name.split_once('.')
            && !domain.is_empty()
        {
            d.insert("domains", Value::from(vec![domain.to_owned()]));
        }
        d
    }

    /// `Ip4Config` for v4v6.
    pub fn ip4_config(&self) -> Dict {
        let o = self.offer;
        let mut d = Dict::new();
        d.insert("address", Value::from(v4(o.client_v4)));
        d.insert("prefix", Value::from(32u32));
        d.insert("ptp", Value::from(v4(o.server_v4)));
        d
    }

    /// One line for `nmcli`'s VPN.BANNER: mode, broker, addresses, prefix, DNS name.
    pub fn banner(&self) -> String {
        let o = self.offer;
        let mut s = format!("TSP {} tunnel with {} ({})", o.mode, self.server, self.mechanism);
        match o.mode {
            TunnelMode::V4V6 => s += &format!("; address {}", o.client_v4),
            _ => s += &format!("; address {}", o.client_v6),
        }
        if let Some(p) = &o.prefix {
            s += &format!("; delegated prefix {}/{}", p.addr, p.len);
            if let Some(lan) = self.lan_interface {
                s += &format!(" advertised on {lan}");
            }
        }
        if let Some(n) = &o.client_dns_name {
            s += &format!("; DNS name {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsp_proto::xml::{Keepalive, OfferedPrefix};

    fn offer(mode: TunnelMode) -> Offer {
        Offer {
            mode,
            lifetime: None,
            server_v4: Ipv4Addr::new(192, 0, 2, 1),
            server_v6: "2001:db8:b::1".parse().unwrap(),
            client_v4: Ipv4Addr::new(192, 0, 2, 2),
            client_v6: "2001:db8:b::2".parse().unwrap(),
            client_dns_name: Some("anon-1.demo.example".into()),
            client_dns_server: Some("2001:db8:b::53".parse().unwrap()),
            prefix: Some(OfferedPrefix {
                addr: "2001:db8:100::".parse().unwrap(),
                len: 56,
            }),
            keepalive: Some(Keepalive {
                interval: 30,
                address: "2001:db8:b::1".parse().unwrap(),
            }),
        }
    }

    fn report(o: &Offer, broker: IpAddr) -> TunnelReport<'_> {
        TunnelReport {
            ifname: "tsp-1234abcd",
            offer: o,
            broker,
            server: "broker.example",
            mtu: 1280,
            mechanism: "DIGEST-MD5",
            lan_interface: Some("eth1"),
        }
    }

    #[test]
    fn ipv4_gateway_is_in_memory_order() {
        let o = offer(TunnelMode::V6UdpV4);
        let c = report(&o, "203.0.113.1".parse().unwrap()).config();
        // The bytes of the integer, as NetworkManager copies them into an in_addr.
        let Some(Value::U32(g)) = c.get("gateway") else {
            panic!("gateway is not u: {c:?}")
        };
        assert_eq!(g.to_ne_bytes(), [203, 0, 113, 1]);
        assert_eq!(c.get("tundev"), Some(&Value::from("tsp-1234abcd")));
        assert_eq!(c.get("has-ip6"), Some(&Value::from(true)));
        assert_eq!(c.get("has-ip4"), Some(&Value::from(false)));
        assert_eq!(c.get("can-persist"), Some(&Value::from(true)));
        assert_eq!(c.get("mtu"), Some(&Value::U32(1280)));
    }

    #[test]
    fn ip6_config_types() {
        let o = offer(TunnelMode::V6V4);
        let d = report(&o, "192.0.2.1".parse().unwrap()).ip6_config();
        assert_eq!(d["address"].value_signature().to_string(), "ay");
        assert_eq!(d["address"], Value::from(o.client_v6.octets().to_vec()));
        assert_eq!(d["ptp"], Value::from(o.server_v6.octets().to_vec()));
        assert_eq!(d["prefix"], Value::U32(128));
        assert_eq!(d["dns"].value_signature().to_string(), "aay");
        assert_eq!(d["domains"], Value::from(vec!["demo.example".to_owned()]));
    }

    #[test]
    fn v4v6_reports_ipv4_and_an_ipv6_gateway() {
        let o = offer(TunnelMode::V4V6);
        let r = report(&o, "2001:db8::1".parse().unwrap());
        let c = r.config();
        assert_eq!(c["gateway"].value_signature().to_string(), "ay");
        assert_eq!(c["has-ip4"], Value::from(true));
        assert_eq!(c["has-ip6"], Value::from(false));
        let d = r.ip4_config();
        let Value::U32(a) = d["address"] else { panic!() };
        assert_eq!(a.to_ne_bytes(), [192, 0, 2, 2]);
        assert_eq!(d["prefix"], Value::U32(32));
    }

    #[test]
    fn banner_summarises() {
        let o = offer(TunnelMode::V6UdpV4);
        let b = report(&o, "192.0.2.1".parse().unwrap()).banner();
        assert_eq!(
            b,
            "TSP v6udpv4 tunnel with broker.example (DIGEST-MD5); address 2001:db8:b::2; delegated prefix \
             2001:db8:100::/56 advertised on eth1; DNS name anon-1.demo.example"
        );
    }
}
