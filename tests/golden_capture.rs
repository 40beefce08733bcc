//! Golden bytes: a real capture of gogoc 1.2 negotiating an anonymous v6udpv4 tunnel with the
//! tsps broker (tests/data/gogoc-tsps-anon-udp.txt, tcpdump -XX). Our client, fed the broker's
//! replies, must send exactly gogoc's payloads; our parsers must accept tsps's offer.

use tsp_proto::client::{ClientParams, ClientSession, Outcome, Step, Transport};
use tsp_proto::rudp::Header;
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, TunnelMode, Version};
use tsp_proto::xml::CreateRequest;

/// (from client?, UDP payload) for each packet of the capture.
fn packets() -> Vec<(bool, Vec<u8>)> {
    let text = include_str!("data/gogoc-tsps-anon-udp.txt");
    let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if !line.starts_with('\t') {
            // "ts IP 192.0.2.2.50947 > 192.0.2.1.3653: UDP, length 23"
            out.push((line.contains("192.0.2.2.50947 >"), Vec::new()));
            continue;
        }
        let hex = line.trim().split_once(":  ").map(|(_, rest)| rest).unwrap_or("");
        // The hex columns end where the two-space gap before the ASCII rendering starts.
        let hex = hex.split("  ").next().unwrap_or("");
        let bytes = out.last_mut().map(|p| &mut p.1).expect("hex after a header line");
        for group in hex.split_whitespace() {
            for i in (0..group.len()).step_by(2) {
                bytes.push(u8::from_str_radix(&group[i..i + 2], 16).expect("hex"));
            }
        }
    }
    // Ethernet (14) + IPv4 (20) + UDP (8) headers.
    out.into_iter().map(|(c, b)| (c, b[42..].to_vec())).collect()
}

#[test]
fn client_sends_gogocs_bytes() {
    let pk = packets();
    assert_eq!(
        pk.len(),
        11,
        "8 negotiation datagrams, a router solicitation, one ping each way"
    );
    let control: Vec<_> = pk.iter().filter(|(_, p)| p[0] >> 4 == 0xF).collect();
    assert_eq!(control.len(), 8);
    let mut session = ClientSession::new(ClientParams {
        version: Version::V2_0_2,
        transport: Transport::Udp,
        auth_method: AuthMethod::Anonymous,
        allow_plain: false,
        username: String::new(),
        password: Secret::default(),
        server_name: "192.0.2.1".into(),
        request: CreateRequest {
            mode: TunnelMode::V6UdpV4,
            proxy: false,
            client_addr: "192.0.2.2".parse().unwrap(),
            keepalive: Some(30),
            router: None,
        },
        cnonce: "0".into(),
    });
    let mut step = session.start().unwrap();
    let mut rng = rand::rngs::OsRng;
    for pair in control.chunks(2) {
        let (from_client, req) = pair[0];
        let (from_server, reply) = pair[1];
        assert!(*from_client && !*from_server);
        let (req_hdr, req_payload) = Header::decode(req).unwrap();
        let (rep_hdr, reply_payload) = Header::decode(reply).unwrap();
        assert_eq!(req_hdr, rep_hdr, "tsps echoes the header verbatim");
        let Step::Send { bytes, .. } = &step else {
            panic!("expected a send, got {step:?}")
        };
        assert_eq!(
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(req_payload),
            "datagram seq {:#x}",
            req_hdr.seq
        );
        assert_eq!(bytes.as_slice(), req_payload);
        step = session.on_reply(reply_payload, &mut rng).unwrap();
    }
    let Step::Done(Outcome::Tunnel(n)) = step else {
        panic!("negotiation did not finish: {step:?}")
    };
    assert_eq!(n.offer.mode, TunnelMode::V6UdpV4);
    assert_eq!(n.offer.client_v6.to_string(), "2001:db8:b:0:ffff:c000:202:c703");
    assert_eq!(n.offer.server_v6.to_string(), "2001:db8:b::1");
    assert_eq!(n.offer.server_v4.to_string(), "192.0.2.1");
    assert_eq!(n.offer.keepalive.map(|k| k.interval), Some(30));
    // The RUDP sequence numbers gogoc used: F0..F3.
    let seqs: Vec<u32> = control
        .iter()
        .step_by(2)
        .map(|(_, p)| Header::decode(p).unwrap().0.seq)
        .collect();
    assert_eq!(seqs, vec![0xf0, 0xf1, 0xf2, 0xf3]);
}

#[test]
fn data_packets_are_not_control() {
    for (_, p) in packets().iter().filter(|(_, p)| p[0] >> 4 == 6) {
        assert!(!tsp_proto::rudp::is_control(p));
        assert!(Header::decode(p).is_none());
    }
}
