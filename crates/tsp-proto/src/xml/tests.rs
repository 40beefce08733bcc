//! Tests of the XML documents: the spec's byte counts, real peers' documents, hostile input.

use super::*;
use crate::types::MAX_MESSAGE;
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
        Err(XmlError::WrongAction {
            action: "info".into(),
            expected: "create"
        })
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

#[test]
fn accept_is_read_as_a_document() {
    assert_eq!(parse_accept(ACCEPT.as_bytes()), Ok(()));
    for variant in [
        "<tunnel action=\"ACCEPT\"/>",
        "\r\n<tunnel type=\"v6v4\" action=\"accept\">\t<client/></tunnel>",
    ] {
        assert_eq!(parse_accept(variant.as_bytes()), Ok(()), "{variant}");
    }
    assert_eq!(
        parse_accept(b"<tunnel action=\"reject\"></tunnel>\r\n"),
        Err(XmlError::WrongAction {
            action: "reject".into(),
            expected: "accept"
        })
    );
    // Before documents were parsed, the substring `action="accept"` anywhere was enough.
    assert_eq!(
        parse_accept(b"<tunnel action=\"reject\"><x>action=\"accept\"</x></tunnel>"),
        Err(XmlError::WrongAction {
            action: "reject".into(),
            expected: "accept"
        })
    );
    assert!(matches!(
        parse_accept(b"action=\"accept\""),
        Err(XmlError::StrayText(_))
    ));
    assert!(matches!(
        parse_accept(b"<tunnel action=\"accept\">"),
        Err(XmlError::Unclosed(_))
    ));
    assert!(matches!(
        parse_accept(b"<tunnel><x action=\"accept\"/></tunnel>"),
        Err(XmlError::MissingAttribute { .. })
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
    (mode, any::<bool>(), (1u8..=128, any_v6()), (1u8..=32, any_v4())).prop_flat_map(|(mode, with_prefix, p6, p4)| {
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
    })
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
