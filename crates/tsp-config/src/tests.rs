//! Tests of the gogoc.conf / gw6c.conf reader and writer.
//!
//! See docs/tsp-wire.md §9.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use proptest::prelude::*;

use super::*;
use tsp_proto::secret::Secret;
use tsp_proto::types::{AuthMethod, DatapathKind, HostType, TunnelMode};

const SECRET: &str = "S3cr3t-Pa55";

fn origin() -> &'static Path {
    Path::new("gogoc.conf")
}

fn parse_ok(text: &str) -> GogocConfig {
    match parse(text, origin()) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text, origin()) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

/// Asserts file, line and key(s) of an error and returns its message.
#[track_caller]
fn assert_at(e: &ConfigError, line: Option<usize>, keys: &[&str]) -> String {
    let msg = e.to_string();
    assert_eq!(e.file(), "gogoc.conf", "{msg}");
    assert_eq!(e.line(), line, "{msg}");
    assert_eq!(e.keys(), keys, "{msg}");
    let prefix = match line {
        Some(l) => format!("gogoc.conf:{l}: "),
        None => "gogoc.conf: ".to_owned(),
    };
    assert!(msg.starts_with(&prefix), "{msg}");
    for key in keys {
        assert!(msg.contains(key), "{msg} lacks {key}");
    }
    msg
}

/// A valid file with `line` as line 2 (line 1 makes the password requirement go away).
fn with_line(line: &str) -> String {
    format!("auth_method=anonymous\n{line}\n")
}

#[track_caller]
fn err_on_line2(line: &str, key: &str) -> String {
    let e = parse_err(&with_line(line));
    assert_at(&e, Some(2), &[key])
}

// ----------------------------------------------------------------------------------------
// Defaults

#[test]
fn defaults_are_gogoc_1_2_linux() {
    let c = GogocConfig::default();
    assert_eq!(c.dialect, Dialect::Gogoc);
    assert_eq!(c.userid, "");
    assert!(c.passwd.is_empty());
    assert_eq!(c.server, None);
    assert_eq!(c.auth_method, AuthMethod::Any);
    assert!(!c.allow_plain);
    assert_eq!(c.host_type, HostType::Host);
    assert_eq!(c.prefixlen, 64);
    assert_eq!(c.if_prefix, "");
    assert!(c.dns_server.is_empty());
    assert_eq!(c.gogoc_dir, "");
    assert!(c.auto_retry_connect);
    assert_eq!(c.retry_delay, 30);
    assert_eq!(c.retry_delay_max, 300);
    assert!(c.keepalive);
    assert_eq!(c.keepalive_interval, 30);
    assert_eq!(c.tunnel_mode, TunnelMode::V6AnyV4);
    assert_eq!(c.if_tunnel_v6v4, "sit1");
    assert_eq!(c.if_tunnel_v6udpv4, "tun");
    assert_eq!(c.if_tunnel_v4v6, "tsp-v4v6");
    assert_eq!(c.client_v4, AutoAddr::Auto);
    assert_eq!(AutoAddr::<Ipv4Addr>::default(), AutoAddr::Auto);
    assert_eq!(c.client_v6, AutoAddr::Auto);
    assert_eq!(c.template, "linux");
    assert!(!c.proxy_client);
    assert_eq!(c.broker_list, "tsp-broker-list.txt");
    assert_eq!(c.last_server, "tsp-last-server.txt");
    assert!(!c.always_use_same_server);
    assert_eq!(
        c.log,
        LogLevels {
            console: 0,
            stderr: 1,
            file: 0,
            syslog: 0
        }
    );
    assert_eq!(c.log_filename, "gogoc.log");
    assert!(c.log_rotation);
    assert_eq!(c.log_rotation_size, LogRotationSize::K32);
    assert_eq!(c.log_rotation_size.kib(), 32);
    assert!(!c.log_rotation_delete);
    assert_eq!(c.syslog_facility, SyslogFacility::User);
    assert!(!c.haccess_proxy_enabled);
    assert!(!c.haccess_web_enabled);
    assert_eq!(c.haccess_document_root, "");
    assert_eq!(c.dslite_server, Ipv4Addr::new(192, 0, 0, 1));
    assert_eq!(c.dslite_client, Ipv4Addr::new(192, 0, 0, 2));
    assert_eq!(c.home_dir(), "/usr/local/etc/gogoc");
    assert_eq!(c.template_script(), Path::new("/usr/local/etc/gogoc/template/linux.sh"));
}

#[test]
fn absent_keys_take_the_defaults() {
    let c = parse_ok("passwd=x\n");
    assert_eq!(
        c,
        GogocConfig {
            passwd: Secret::new("x"),
            ..GogocConfig::default()
        }
    );
    let c = parse_ok("auth_method=anonymous");
    assert_eq!(
        c,
        GogocConfig {
            auth_method: AuthMethod::Anonymous,
            ..GogocConfig::default()
        }
    );
}

#[test]
fn empty_values_take_the_defaults() {
    let c = parse_ok(
        "auth_method=\npasswd=x\nretry_delay=\nretry_delay_max=\nprefixlen=\nkeepalive=\n\
         tunnel_mode=\nclient_v4=\nclient_v6=\ntemplate=\nlog_stderr=\nlog_filename=\n\
         log_rotation_size=\nsyslog_facility=\nbroker_list=\nlast_server=\ndslite_server=\n\
         server=\nhost_type=\nuserid=\n",
    );
    assert_eq!(
        c,
        GogocConfig {
            passwd: Secret::new("x"),
            ..GogocConfig::default()
        }
    );
}

#[test]
fn empty_tunnel_interface_means_none() {
    // gogoc has no default for these: empty stays empty, which v6udpv4 does not mind...
    let c = parse_ok(&with_line("tunnel_mode=v6udpv4\nif_tunnel_v6v4=\nif_tunnel_v4v6="));
    assert_eq!(c.if_tunnel_v6v4, "");
    assert_eq!(c.if_tunnel_v4v6, "");
    assert_eq!(c.if_tunnel_v6udpv4, "tun");
    assert_eq!(c.tunnel_interface(TunnelMode::V6UdpV4), "tun");
    // ...but v6anyv4 (the default mode) does.
    let e = parse_err(&with_line("if_tunnel_v6udpv4="));
    let msg = assert_at(&e, Some(2), &["tunnel_mode", "if_tunnel_v6v4", "if_tunnel_v6udpv4"]);
    assert!(msg.contains("v6anyv4"), "{msg}");
}

#[test]
fn sample_file_parses() {
    let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/gogoc.conf"));
    let c = parse_ok(text);
    let expected = GogocConfig {
        server: Some("192.0.2.1".to_owned()),
        auth_method: AuthMethod::Anonymous,
        ..GogocConfig::default()
    };
    assert_eq!(c, expected);
    assert!(c.validate_for_connect(origin()).is_ok());
    // No interface name the kernel creates by itself (sit0 …): those never come up as ours.
    for mode in [TunnelMode::V6V4, TunnelMode::V6UdpV4, TunnelMode::V4V6] {
        let name = c.tunnel_interface(mode);
        assert!(crate::kernel_owned_ifname(name).is_none(), "{mode}: {name}");
    }
    assert!(!text.contains("=sit0"), "the sample still names sit0");
    assert!(!c.router_fallback_host);
    assert_eq!(c.server_endpoint(), Ok((Host::V4(Ipv4Addr::new(192, 0, 2, 1)), 3653)));
    // Every key is documented (written out) in the sample.
    for line in to_text(&c).lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let key = line.split('=').next().unwrap_or_default();
        assert!(text.contains(&format!("\n{key}=")), "sample lacks {key}");
    }
}

// ----------------------------------------------------------------------------------------
// Syntax

#[test]
fn comments_blanks_whitespace_and_equals_in_values() {
    let c = parse_ok(
        "# comment\n\n   # indented comment\n\t\n  userid \t=  alice  \npasswd= a=b #c \n\
         server =broker.example.net:3654\n",
    );
    assert_eq!(c.userid, "alice");
    // Everything after the first '=' is the value; '#' inside a value is not a comment.
    assert_eq!(c.passwd.expose(), "a=b #c");
    assert_eq!(c.server.as_deref(), Some("broker.example.net:3654"));
    assert_eq!(
        c.server_endpoint(),
        Ok((Host::Name("broker.example.net".to_owned()), 3654))
    );
}

#[test]
fn crlf_and_bom_tolerated() {
    let unix = "auth_method=anonymous\nserver=192.0.2.1\nkeepalive=no\n\n# x\n";
    let dos = format!("\u{feff}{}", unix.replace('\n', "\r\n"));
    assert_eq!(parse_ok(&dos), parse_ok(unix));
    assert!(!parse_ok(&dos).keepalive);
    // And errors still count lines correctly.
    let e = parse_err("auth_method=anonymous\r\n\r\nretry_delay=x\r\n");
    assert_at(&e, Some(3), &["retry_delay"]);
}

#[test]
fn booleans_case_insensitive() {
    let c = parse_ok(&with_line("keepalive=NO\nlog_rotation=Yes\nalways_use_same_server=yEs"));
    assert!(!c.keepalive);
    assert!(c.log_rotation);
    assert!(c.always_use_same_server);
    let msg = err_on_line2("keepalive=true", "keepalive");
    assert!(msg.contains("\"true\" is not yes or no"), "{msg}");
}

#[test]
fn keywords_case_insensitive() {
    let c = parse_ok(
        "auth_method=ANONYMOUS\ntunnel_mode=V6UDPV4\nhost_type=Router\nif_prefix=eth1\n\
         syslog_facility=local3\nclient_v4=AUTO",
    );
    assert_eq!(c.auth_method, AuthMethod::Anonymous);
    assert_eq!(c.tunnel_mode, TunnelMode::V6UdpV4);
    assert_eq!(c.host_type, HostType::Router);
    assert_eq!(c.syslog_facility, SyslogFacility::Local3);
    // Written back as gogoc spells them.
    let text = to_text(&c);
    assert!(text.contains("\nsyslog_facility=LOCAL3\n"));
    assert!(text.contains("\ntunnel_mode=v6udpv4\n"));
}

// ----------------------------------------------------------------------------------------
// Line-level errors

#[test]
fn the_example_message() {
    let text = format!("{}retry_delay=9000\n", "# c\n".repeat(11));
    let e = parse_err(&text);
    assert_eq!(
        e.to_string(),
        "gogoc.conf:12: key \"retry_delay\": 9000 is out of range 0..3600"
    );
    assert!(matches!(e, ConfigError::OutOfRange { min: 0, max: 3600, .. }));
}

#[test]
fn unknown_key() {
    let e = parse_err("auth_method=anonymous\nservre=192.0.2.1\n");
    let msg = assert_at(&e, Some(2), &["servre"]);
    assert!(matches!(e, ConfigError::UnknownKey { .. }));
    assert!(msg.contains("did you mean \"server\""), "{msg}");
    assert!(!msg.contains("192.0.2.1"), "the value is not shown: {msg}");
    // Keys are case-sensitive, as in gogoc; the hint says which one was meant.
    let e = parse_err("Passwd=x\n");
    let msg = assert_at(&e, Some(1), &["Passwd"]);
    assert!(msg.contains("did you mean \"passwd\""), "{msg}");
    // A long, strange name is cut short and escaped.
    let e = parse_err(&format!("{}=1\n", "k".repeat(500)));
    assert!(e.to_string().len() < 200);
}

#[test]
fn old_tspc_keys() {
    // tsp_dir and if_tunnel map onto gogoc_dir and if_tunnel_v6v4.
    let c = parse_ok("auth_method=anonymous\ntsp_dir=/etc/tspc\nif_tunnel=sit2\n");
    assert_eq!(c.gogoc_dir, "/etc/tspc");
    assert_eq!(c.if_tunnel_v6v4, "sit2");
    assert_eq!(c.dialect, Dialect::Gogoc);
    // ... and are written back under their new names.
    let text = to_text(&c);
    assert!(text.contains("\ngogoc_dir=/etc/tspc\n") && text.contains("\nif_tunnel_v6v4=sit2\n"));
    // Both spellings of one setting: a duplicate.
    let e = parse_err("auth_method=anonymous\ngogoc_dir=/a\ntsp_dir=/b\n");
    assert_at(&e, Some(3), &["tsp_dir"]);
    assert!(matches!(e, ConfigError::DuplicateKey { first_line: 2, .. }));
    // The rest: a clear error.
    let msg = err_on_line2("tsp_version=1.0.1", "tsp_version");
    assert!(msg.contains("negotiated"), "{msg}");
    let msg = err_on_line2("if_source=eth0", "if_source");
    assert!(msg.contains("client_v4"), "{msg}");
    // A tspc 1.x file with userid=anonymous gets a hint.
    let e = parse_err("userid=anonymous\nauth_method=any\npasswd=\n");
    let msg = assert_at(&e, Some(3), &["passwd", "auth_method"]);
    assert!(msg.contains("auth_method=anonymous"), "{msg}");
}

#[test]
fn duplicate_key() {
    let e = parse_err("auth_method=anonymous\nkeepalive=yes\n\nkeepalive=no\n");
    let msg = assert_at(&e, Some(4), &["keepalive"]);
    assert!(msg.contains("first on line 2"), "{msg}");
    // Even with an empty value.
    let e = parse_err("auth_method=anonymous\nserver=\nserver=192.0.2.1\n");
    assert_at(&e, Some(3), &["server"]);
}

#[test]
fn line_without_equals() {
    let e = parse_err(&format!("auth_method=anonymous\npasswd {SECRET}\n"));
    let msg = assert_at(&e, Some(2), &[]);
    assert!(matches!(e, ConfigError::MissingEquals { .. }));
    assert!(!msg.contains(SECRET), "{msg}");
}

#[test]
fn empty_key() {
    let e = parse_err("auth_method=anonymous\n  = value\n");
    assert_at(&e, Some(2), &[]);
    assert!(matches!(e, ConfigError::EmptyKey { .. }));
}

#[test]
fn control_characters() {
    let e = parse_err("auth_method=anonymous\nuserid=a\u{7}b\n");
    let msg = assert_at(&e, Some(2), &["userid"]);
    assert!(msg.contains("U+0007"), "{msg}");
    // A lone CR inside a line is not a line end.
    let e = parse_err("auth_method=anonymous\r\nserver=a\rb\n");
    assert_at(&e, Some(2), &["server"]);
    // In a comment, or before the '=', the line is named instead of a key.
    let e = parse_err("# \u{0}\n");
    assert_at(&e, Some(1), &[]);
    let e = parse_err("auth_method=anonymous\npass\u{1b}wd=x\n");
    assert_at(&e, Some(2), &[]);
    // TAB is a blank, not a control character.
    assert!(parse_ok("auth_method=anonymous\n\tuserid\t=\tbob\t\n").userid == "bob");
}

#[test]
fn invalid_utf8_names_the_line() {
    let dir = TempDir::new("utf8");
    let path = dir.path().join("gogoc.conf");
    let mut bytes = b"auth_method=anonymous\n# ok\nuserid=\xff\xfe\n".to_vec();
    bytes.extend_from_slice(b"server=192.0.2.1\n");
    std::fs::write(&path, bytes).unwrap();
    let e = load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::InvalidUtf8 { .. }));
    assert_eq!(e.line(), Some(3));
    assert!(e.to_string().starts_with(&format!("{}:3: ", path.display())), "{e}");
}

#[test]
fn line_too_long() {
    let e = parse_err(&format!("auth_method=anonymous\n# {}\n", "x".repeat(3000)));
    assert_at(&e, Some(2), &[]);
    assert!(matches!(e, ConfigError::LineTooLong { max: 2047, .. }));
}

#[test]
fn text_too_large() {
    let text = "# filler line\n".repeat(5000);
    let e = parse_err(&text);
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    assert_eq!(e.file(), "gogoc.conf");
}

// ----------------------------------------------------------------------------------------
// Per-key validation

#[test]
fn userid_rules() {
    assert_eq!(
        parse_ok(&with_line(&format!("userid={}", "u".repeat(253))))
            .userid
            .len(),
        253
    );
    let e = parse_err(&with_line(&format!("userid={}", "u".repeat(254))));
    assert_at(&e, Some(2), &["userid"]);
    assert!(matches!(e, ConfigError::ValueTooLong { len: 254, max: 253, .. }));
    let msg = err_on_line2("userid=jérôme", "userid");
    assert!(msg.contains("printable ASCII"), "{msg}");
}

#[test]
fn passwd_rules() {
    let ok = parse_ok(&format!("passwd={}", "p".repeat(128)));
    assert_eq!(ok.passwd.expose().len(), 128);
    let e = parse_err(&format!("passwd={}{}", SECRET, "p".repeat(128)));
    assert_at(&e, Some(1), &["passwd"]);
    assert!(matches!(e, ConfigError::ValueTooLong { max: 128, .. }));
    let e = parse_err(&format!("passwd={SECRET}é\n"));
    let msg = assert_at(&e, Some(1), &["passwd"]);
    assert!(!msg.contains(SECRET));
    // Required unless anonymous, for every other method.
    for method in ["any", "digest-md5", "passdss-3des-1", "plain"] {
        let e = parse_err(&format!("auth_method={method}\npasswd=\n"));
        let msg = assert_at(&e, Some(2), &["passwd", "auth_method"]);
        assert!(msg.contains(method), "{msg}");
    }
    // Named without a line when neither key is in the file.
    let e = parse_err("# nothing\n");
    assert_at(&e, None, &["passwd", "auth_method"]);
    assert!(parse_ok("auth_method=anonymous\npasswd=\n").passwd.is_empty());
    // For import into a NetworkManager profile the password may be left empty; nothing else
    // is relaxed.
    let c = parse_without_password("auth_method=digest-md5\nuserid=u\npasswd=\n", Path::new("g.conf")).unwrap();
    assert!(c.passwd.is_empty());
    assert!(parse_without_password("auth_method=digest-md5\ntunnel_mode=gre\n", Path::new("g.conf")).is_err());
}

#[test]
fn server_rules() {
    for good in [
        "broker.example.net",
        "a-b.c",
        "192.0.2.1",
        "192.0.2.1:3654",
        "[2001:db8::1]",
        "[2001:db8::1]:80",
    ] {
        assert_eq!(
            parse_ok(&with_line(&format!("server={good}"))).server.as_deref(),
            Some(good)
        );
    }
    for bad in [
        "broker_1.example",
        "2001:db8::1",
        "[2001:db8::1",
        "host:0",
        "host:99999",
        "300.1.1.1",
        "a..b",
        "exa mple",
    ] {
        let msg = err_on_line2(&format!("server={bad}"), "server");
        assert!(
            matches!(
                parse_err(&with_line(&format!("server={bad}"))),
                ConfigError::BadValue { .. }
            ),
            "{msg}"
        );
    }
    let e = parse_err(&with_line(&format!("server={}", "a".repeat(1026))));
    assert_at(&e, Some(2), &["server"]);
    // Absent is fine for parsing, not for connecting.
    let c = parse_ok("auth_method=anonymous\n");
    let e = c.validate_for_connect(origin()).unwrap_err();
    assert_at(&e, None, &["server"]);
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    assert_eq!(c.server_endpoint(), Err(ServerError::Empty));
}

#[test]
fn split_server_is_public() {
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(split_server("[2001:db8::1]:3653"), Ok((Host::V6(v6), Some(3653))));
}

#[test]
fn auth_method_rules() {
    let e = parse_err("auth_method=kerberos\n");
    let msg = assert_at(&e, Some(1), &["auth_method"]);
    assert!(msg.contains("digest-md5"), "{msg}");
}

#[test]
fn allow_plain_rules() {
    let c = parse_ok("passwd=x\nallow_plain=yes\n");
    assert!(c.allow_plain && c.plain_allowed());
    assert!(!parse_ok("passwd=x\n").plain_allowed());
    assert!(parse_ok("passwd=x\nauth_method=plain").plain_allowed());
    err_on_line2("allow_plain=maybe", "allow_plain");
}

#[test]
fn prefixlen_rules() {
    assert_eq!(parse_ok(&with_line("prefixlen=1")).prefixlen, 1);
    assert_eq!(parse_ok(&with_line("prefixlen=128")).prefixlen, 128);
    for bad in ["0", "129", "99999999999999999999999"] {
        let e = parse_err(&with_line(&format!("prefixlen={bad}")));
        assert_at(&e, Some(2), &["prefixlen"]);
        assert!(matches!(e, ConfigError::OutOfRange { min: 1, max: 128, .. }), "{e}");
    }
    for bad in ["-1", "+5", "6 4", "0x40"] {
        let e = parse_err(&with_line(&format!("prefixlen={bad}")));
        assert_at(&e, Some(2), &["prefixlen"]);
        assert!(matches!(e, ConfigError::BadValue { .. }), "{e}");
    }
}

#[test]
fn retry_delay_rules() {
    let c = parse_ok(&with_line("retry_delay=0\nretry_delay_max=3600"));
    assert_eq!((c.retry_delay, c.retry_delay_max), (0, 3600));
    let e = parse_err(&with_line("retry_delay=3601"));
    assert_at(&e, Some(2), &["retry_delay"]);
    let e = parse_err(&with_line("retry_delay_max=3601"));
    assert_at(&e, Some(2), &["retry_delay_max"]);
    assert!(matches!(e, ConfigError::OutOfRange { min: 0, max: 3600, .. }));
    // gogoc also requires retry_delay <= retry_delay_max.
    let e = parse_err(&with_line("retry_delay=400\n# x\nretry_delay_max=300"));
    let msg = assert_at(&e, Some(4), &["retry_delay", "retry_delay_max"]);
    assert!(msg.contains("400") && msg.contains("300"), "{msg}");
    let e = parse_err(&with_line("retry_delay=400"));
    assert_at(&e, Some(2), &["retry_delay", "retry_delay_max"]);
}

#[test]
fn keepalive_interval_rules() {
    assert_eq!(
        parse_ok(&with_line("keepalive=no\nkeepalive_interval=0")).keepalive_interval,
        0
    );
    let e = parse_err(&with_line("keepalive_interval=0\nkeepalive=yes"));
    assert_at(&e, Some(3), &["keepalive_interval", "keepalive"]);
    assert!(matches!(e, ConfigError::Conflict { .. }));
    // keepalive defaults to yes.
    let e = parse_err(&with_line("keepalive_interval=0"));
    assert_at(&e, Some(2), &["keepalive_interval", "keepalive"]);
    let e = parse_err(&with_line("keepalive_interval=3601"));
    assert_at(&e, Some(2), &["keepalive_interval"]);
}

#[test]
fn proxy_client_rules() {
    assert!(parse_ok(&with_line("proxy_client=yes\nkeepalive=no\ntunnel_mode=v6v4")).proxy_client);
    let e = parse_err(&with_line("proxy_client=yes\nkeepalive=no\ntunnel_mode=v6udpv4"));
    assert_at(&e, Some(4), &["proxy_client", "tunnel_mode"]);
    let e = parse_err(&with_line("keepalive=yes\nproxy_client=yes\ntunnel_mode=v6v4"));
    assert_at(&e, Some(3), &["proxy_client", "keepalive"]);
    // keepalive=yes by default.
    let e = parse_err(&with_line("proxy_client=yes"));
    assert_at(&e, Some(2), &["proxy_client", "keepalive"]);
}

#[test]
fn tunnel_interface_rules() {
    let e = parse_err(&with_line("tunnel_mode=v6v4\nif_tunnel_v6v4="));
    assert_at(&e, Some(3), &["tunnel_mode", "if_tunnel_v6v4"]);
    let e = parse_err(&with_line("tunnel_mode=v4v6\nif_tunnel_v4v6="));
    assert_at(&e, Some(3), &["tunnel_mode", "if_tunnel_v4v6"]);
    let e = parse_err(&with_line("if_tunnel_v6v4="));
    assert_at(&e, Some(2), &["tunnel_mode", "if_tunnel_v6v4", "if_tunnel_v6udpv4"]);
    let msg = err_on_line2("tunnel_mode=dslite", "tunnel_mode");
    assert!(msg.contains("not supported"), "{msg}");
    err_on_line2("tunnel_mode=v6v5", "tunnel_mode");
}

#[test]
fn kernel_owned_interface_names_are_refused() {
    for (mode_line, key, name) in [
        ("tunnel_mode=v4v6", "if_tunnel_v4v6", "sit0"),
        ("tunnel_mode=v6v4", "if_tunnel_v6v4", "sit0"),
        ("tunnel_mode=v6v4", "if_tunnel_v6v4", "ip6tnl0"),
        ("tunnel_mode=v6udpv4", "if_tunnel_v6udpv4", "tunl0"),
        ("tunnel_mode=v6anyv4", "if_tunnel_v6udpv4", "ip6gre0"),
        ("tunnel_mode=v4v6", "if_tunnel_v4v6", "gre0"),
        ("tunnel_mode=v4v6", "if_tunnel_v4v6", "gretap0"),
    ] {
        let e = parse_err(&with_line(&format!("{mode_line}\n{key}={name}")));
        let msg = assert_at(&e, Some(3), &[key]);
        assert!(
            msg.contains(&format!("{key}={name}")) && msg.contains("fallback device"),
            "{msg}"
        );
        // validate() (the command line's -i/-u go through it) says the same.
        let mut c = parse_ok(&with_line(mode_line));
        match key {
            "if_tunnel_v4v6" => c.if_tunnel_v4v6 = name.into(),
            "if_tunnel_v6v4" => c.if_tunnel_v6v4 = name.into(),
            _ => c.if_tunnel_v6udpv4 = name.into(),
        }
        let e = c.validate(origin()).unwrap_err();
        assert!(e.to_string().contains("fallback device"), "{e}");
    }
    // gogoc's stock line stays accepted where the mode does not use it, and names close to
    // the kernel's are ordinary names.
    assert_eq!(
        parse_ok(&with_line("tunnel_mode=v6anyv4\nif_tunnel_v4v6=sit0")).if_tunnel_v4v6,
        "sit0"
    );
    assert_eq!(
        parse_ok(&with_line("tunnel_mode=v6v4\nif_tunnel_v6v4=sit1")).if_tunnel_v6v4,
        "sit1"
    );
    assert_eq!(
        parse_ok(&with_line("tunnel_mode=v4v6\nif_tunnel_v4v6=sit00")).if_tunnel_v4v6,
        "sit00"
    );
}

#[test]
fn router_fallback_host_key() {
    let c = parse_ok(&with_line("router_fallback_host=yes"));
    assert!(c.router_fallback_host);
    assert!(to_text(&c).contains("\nrouter_fallback_host=yes\n"));
    assert_eq!(parse_ok(&to_text(&c)), c);
    err_on_line2("router_fallback_host=maybe", "router_fallback_host");
}

#[test]
fn interface_names() {
    let c = parse_ok(&with_line(
        "if_tunnel_v6v4=sit-1.a\nif_tunnel_v6udpv4=tsp0\nif_prefix=br_lan",
    ));
    assert_eq!((c.if_tunnel_v6v4.as_str(), c.if_prefix.as_str()), ("sit-1.a", "br_lan"));
    assert_eq!(
        parse_ok(&with_line(&format!("if_prefix={}", "e".repeat(15))))
            .if_prefix
            .len(),
        15
    );
    let e = parse_err(&with_line(&format!("if_tunnel_v6udpv4={}", "t".repeat(16))));
    assert_at(&e, Some(2), &["if_tunnel_v6udpv4"]);
    assert!(matches!(e, ConfigError::ValueTooLong { len: 16, max: 15, .. }));
    for bad in ["a/b", "a:b", "a b", "..", ".", "tün"] {
        err_on_line2(&format!("if_tunnel_v6v4={bad}"), "if_tunnel_v6v4");
        err_on_line2(&format!("if_prefix={bad}"), "if_prefix");
    }
}

#[test]
fn router_needs_if_prefix() {
    let e = parse_err(&with_line("host_type=router"));
    assert_at(&e, Some(2), &["if_prefix", "host_type"]);
    assert_eq!(
        parse_ok(&with_line("host_type=router\nif_prefix=eth1")).host_type,
        HostType::Router
    );
    err_on_line2("host_type=switch", "host_type");
}

#[test]
fn dns_server_rules() {
    let c = parse_ok(&with_line("dns_server=ns1.example.net:ns2.example.net::192.0.2.53"));
    assert_eq!(c.dns_server, ["ns1.example.net", "ns2.example.net", "192.0.2.53"]);
    let msg = err_on_line2("dns_server=ns1.example.net:bad_name", "dns_server");
    assert!(msg.contains("bad_name"), "{msg}");
    let e = parse_err(&with_line(&format!("dns_server={}", "a:".repeat(520))));
    assert!(matches!(e, ConfigError::ValueTooLong { max: 1025, .. }));
}

#[test]
fn client_address_rules() {
    let c = parse_ok(&with_line("client_v4=198.51.100.7\nclient_v6=[2001:db8::7]"));
    assert_eq!(c.client_v4, AutoAddr::Fixed(Ipv4Addr::new(198, 51, 100, 7)));
    let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    assert_eq!(c.client_v6, AutoAddr::Fixed(v6));
    assert!(
        to_text(&c).contains("\nclient_v6=2001:db8::7\n"),
        "brackets are dropped"
    );
    assert_eq!(
        parse_ok(&with_line("client_v6=2001:db8::7")).client_v6,
        AutoAddr::Fixed(v6)
    );
    for bad in ["1.2.3", "01.2.3.4", "2001:db8::1", "me"] {
        err_on_line2(&format!("client_v4={bad}"), "client_v4");
    }
    for bad in ["[2001:db8::1", "fe80::1%eth0", "192.0.2.1"] {
        err_on_line2(&format!("client_v6={bad}"), "client_v6");
    }
}

#[test]
fn template_rules() {
    assert_eq!(parse_ok(&with_line("template=openwrt")).template, "openwrt");
    let msg = err_on_line2("template=../../bin/sh", "template");
    assert!(msg.contains("not a known template"), "{msg}");
    // A gw6c-only template in a gogoc file.
    let e = parse_err(&with_line("gogoc_dir=/etc/gogoc\ntemplate=checktunnel"));
    let msg = assert_at(&e, Some(3), &["template"]);
    assert!(msg.contains("gogoc.conf"), "{msg}");
    // ... is fine in a gw6c file.
    let c = parse_ok(&with_line("gw6_dir=/etc/gw6c\ntemplate=checktunnel"));
    assert_eq!(c.dialect, Dialect::Gw6c);
}

#[test]
fn file_name_rules() {
    let c = parse_ok(&with_line(
        "broker_list=/var/lib/tsp/brokers.txt\nlog_filename=tspc_1.log",
    ));
    assert_eq!(c.broker_list, "/var/lib/tsp/brokers.txt");
    err_on_line2("broker_list=my brokers.txt", "broker_list");
    err_on_line2("last_server=$HOME/x", "last_server");
    let e = parse_err(&with_line(&format!("log_filename={}", "f".repeat(257))));
    assert_at(&e, Some(2), &["log_filename"]);
}

#[test]
fn log_rules() {
    let c = parse_ok(&with_line("log_console=3\nlog_stderr=0\nlog_file=2\nlog_syslog=1"));
    assert_eq!(
        c.log,
        LogLevels {
            console: 3,
            stderr: 0,
            file: 2,
            syslog: 1
        }
    );
    for key in ["log_console", "log_stderr", "log_file", "log_syslog"] {
        let e = parse_err(&with_line(&format!("{key}=4")));
        assert_at(&e, Some(2), &[key]);
        assert!(matches!(e, ConfigError::OutOfRange { min: 0, max: 3, .. }));
    }
    for kib in [16, 32, 128, 1024] {
        let c = parse_ok(&with_line(&format!("log_rotation_size={kib}")));
        assert_eq!(c.log_rotation_size.kib(), kib);
    }
    let msg = err_on_line2("log_rotation_size=64", "log_rotation_size");
    assert!(msg.contains("16, 32, 128, 1024"), "{msg}");
    err_on_line2("syslog_facility=LOCAL8", "syslog_facility");
    err_on_line2("syslog_facility=DAEMON", "syslog_facility");
    err_on_line2("log_rotation_delete=1", "log_rotation_delete");
}

#[test]
fn haccess_and_dslite_kept() {
    let c = parse_ok(&with_line(
        "haccess_proxy_enabled=yes\nhaccess_web_enabled=yes\nhaccess_document_root=/srv/www\n\
         dslite_server=192.0.0.9\ndslite_client=192.0.0.10",
    ));
    assert!(c.haccess_proxy_enabled && c.haccess_web_enabled);
    assert_eq!(c.haccess_document_root, "/srv/www");
    assert_eq!(c.dslite_server, Ipv4Addr::new(192, 0, 0, 9));
    assert_eq!(parse_ok(&to_text(&c)), c);
    let e = parse_err(&with_line("haccess_web_enabled=yes"));
    assert_at(&e, Some(2), &["haccess_document_root", "haccess_web_enabled"]);
    err_on_line2("dslite_client=192.0.0", "dslite_client");
}

// ----------------------------------------------------------------------------------------
// Dialects

const GW6C_CONF: &str = "userid=\npasswd=\nserver=\nauth_method=anonymous\nhost_type=host\n\
    prefixlen=64\nif_prefix=\ndns_server=\ngw6_dir=/usr/local/gw6c\nauto_retry_connect=yes\n\
    retry_delay=45\nkeepalive=yes\nkeepalive_interval=30\ntunnel_mode=v6anyv4\n\
    if_tunnel_v6v4=sit1\nif_tunnel_v6udpv4=tun\nif_tunnel_v4v6=sit0\nclient_v4=auto\n\
    client_v6=auto\ntemplate=linux\nproxy_client=no\nbroker_list=tsp-broker-list.txt\n\
    last_server=tsp-last-server.txt\nalways_use_same_server=no\nlog_rotation=yes\n\
    log_rotation_size=32\nlog_rotation_delete=no\nsyslog_facility=USER\nhap6_web_enabled=no\n";

#[test]
fn gw6c_detected_and_round_trips() {
    let c = parse_ok(GW6C_CONF);
    assert_eq!(c.dialect, Dialect::Gw6c);
    assert_eq!(c.gogoc_dir, "/usr/local/gw6c");
    assert_eq!(c.home_dir(), "/usr/local/gw6c");
    assert_eq!(c.log_filename, "gw6c.log", "gw6c's default log file");
    assert_eq!(c.retry_delay_max, 45, "gw6c retries at a fixed delay");
    let text = to_text(&c);
    assert!(text.starts_with("# gw6c.conf"));
    assert!(text.contains("\ngw6_dir=/usr/local/gw6c\n"));
    assert!(text.contains("\nhap6_document_root=\n"));
    for absent in ["gogoc_dir", "retry_delay_max", "haccess_", "dslite_"] {
        assert!(!text.contains(absent), "{absent} in gw6c output");
    }
    assert_eq!(parse_ok(&text), c);
    assert_eq!(GogocConfig::default_for(Dialect::Gw6c).log_filename, "gw6c.log");
}

#[test]
fn gw6c_by_file_name_when_keys_do_not_tell() {
    let c = parse(
        GW6C_CONF
            .replace("gw6_dir", "tsp_dir")
            .replace("hap6_web_enabled=no\n", "")
            .as_str(),
        Path::new("/etc/gw6c/gw6c.conf"),
    )
    .unwrap();
    assert_eq!(c.dialect, Dialect::Gw6c);
    let c = parse("auth_method=anonymous\n", origin()).unwrap();
    assert_eq!(c.dialect, Dialect::Gogoc);
}

#[test]
fn mixed_dialects_rejected() {
    let e = parse_err("auth_method=anonymous\ngw6_dir=/a\nretry_delay_max=30\n");
    let msg = assert_at(&e, Some(3), &["retry_delay_max", "gw6_dir"]);
    assert!(msg.contains("line 2"), "{msg}");
    let e = parse_err("auth_method=anonymous\nhaccess_web_enabled=no\nhap6_proxy_enabled=no\n");
    assert_at(&e, Some(3), &["haccess_web_enabled", "hap6_proxy_enabled"]);
}

#[test]
fn gw6c_in_memory_constraints() {
    let mut c = GogocConfig::default_for(Dialect::Gw6c);
    c.auth_method = AuthMethod::Anonymous;
    assert!(c.validate(origin()).is_ok());
    c.retry_delay_max = 300;
    let e = c.validate(origin()).unwrap_err();
    assert_at(&e, None, &["retry_delay_max"]);
}

// ----------------------------------------------------------------------------------------
// Writing, secrecy, files

#[test]
fn to_text_round_trips_and_can_omit_the_password() {
    let c = GogocConfig {
        userid: "alice".into(),
        passwd: Secret::new(SECRET),
        server: Some("[2001:db8::1]:3653".into()),
        dns_server: vec!["ns1.example.net".into(), "ns2.example.net".into()],
        ..GogocConfig::default()
    };
    let text = to_text(&c);
    assert!(text.contains(&format!("\npasswd={SECRET}\n")));
    assert_eq!(parse_ok(&text), c);
    let redacted = to_text_with(&c, false);
    assert!(!redacted.contains(SECRET));
    assert!(redacted.contains("\npasswd=\n"));
    // Every gogoc key (and our keepalive_probe_* keys) is written explicitly; our `allow_plain` and `router_fallback_host`
    // only when set.
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#') && l.contains('=')).count(),
        42
    );
    assert!(!text.contains("allow_plain") && !text.contains("datapath_kind") && !text.contains("busy_poll"));
    let userspace = GogocConfig {
        datapath_kind: DatapathKind::Userspace,
        ..c.clone()
    };
    let text_u = to_text(&userspace);
    assert!(text_u.contains("\ndatapath_kind=userspace\n"), "{text_u}");
    assert_eq!(parse_ok(&text_u), userspace);
    assert_eq!(
        parse_ok("auth_method=anonymous\ndatapath_kind=Kernel\n").datapath_kind,
        DatapathKind::Kernel,
        "case-insensitive, as gogoc's values"
    );
    let polling = GogocConfig {
        busy_poll: 20_000,
        ..c.clone()
    };
    let text_p = to_text(&polling);
    assert!(text_p.contains("\nbusy_poll=20000\n"), "{text_p}");
    assert_eq!(parse_ok(&text_p), polling);
    let e = parse_err("auth_method=anonymous\nbusy_poll=1000001\n").to_string();
    assert!(e.contains("busy_poll") && e.contains("1000000"), "{e}");
    let with_plain = to_text(&GogocConfig {
        allow_plain: true,
        ..c.clone()
    });
    assert!(with_plain.contains("\nallow_plain=yes\n"));
    assert!(parse_ok(&with_plain).allow_plain);
}

#[test]
fn password_never_in_errors_or_debug() {
    let cfg = GogocConfig {
        passwd: Secret::new(SECRET),
        ..GogocConfig::default()
    };
    assert!(!format!("{cfg:?}").contains(SECRET));
    let texts = [
        format!("passwd={SECRET}\u{7}\n"),
        format!("passwd={SECRET}é\n"),
        format!("passwd={SECRET}{}\n", "x".repeat(200)),
        format!("passwd={SECRET}\npasswd={SECRET}\n"),
        format!("passwd={SECRET}\nproxy_client=yes\n"),
        format!("passwd {SECRET}\n"),
        format!("password={SECRET}\n"),
        format!("passwd={SECRET}\nuserid=\u{1}\n"),
        format!("{SECRET}\n"),
    ];
    for text in &texts {
        let e = parse_err(text);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET), "password leaked: {shown}");
    }
    // In-memory validation too.
    let bad = GogocConfig {
        passwd: Secret::new(format!(" {SECRET}")),
        ..GogocConfig::default()
    };
    let e = bad.validate(origin()).unwrap_err();
    assert!(!format!("{e} {e:?}").contains(SECRET));
    assert_at(&e, None, &["passwd"]);
}

#[test]
fn validate_catches_what_cannot_be_written() {
    let base = GogocConfig {
        auth_method: AuthMethod::Anonymous,
        ..GogocConfig::default()
    };
    assert!(base.validate(origin()).is_ok());
    let cases: Vec<(GogocConfig, &str)> = vec![
        (
            GogocConfig {
                userid: "bob ".into(),
                ..base.clone()
            },
            "userid",
        ),
        (
            GogocConfig {
                server: Some(String::new()),
                ..base.clone()
            },
            "server",
        ),
        (
            GogocConfig {
                prefixlen: 0,
                ..base.clone()
            },
            "prefixlen",
        ),
        (
            GogocConfig {
                dns_server: vec![String::new()],
                ..base.clone()
            },
            "dns_server",
        ),
        (
            GogocConfig {
                dns_server: vec!["a:b".into()],
                ..base.clone()
            },
            "dns_server",
        ),
        (
            GogocConfig {
                retry_delay: 5000,
                ..base.clone()
            },
            "retry_delay",
        ),
        (
            GogocConfig {
                log_filename: String::new(),
                ..base.clone()
            },
            "log_filename",
        ),
        (
            GogocConfig {
                template: "custom".into(),
                ..base.clone()
            },
            "template",
        ),
        (
            GogocConfig {
                if_tunnel_v6v4: "x/y".into(),
                ..base.clone()
            },
            "if_tunnel_v6v4",
        ),
        (
            GogocConfig {
                log: LogLevels {
                    file: 9,
                    ..LogLevels::default()
                },
                ..base.clone()
            },
            "log_file",
        ),
        (
            GogocConfig {
                gogoc_dir: "/etc/\n".into(),
                ..base.clone()
            },
            "gogoc_dir",
        ),
    ];
    for (c, key) in cases {
        let e = c.validate(origin()).unwrap_err();
        assert_at(&e, None, &[key]);
    }
}

#[test]
fn load_and_save() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("save");
    let path = dir.path().join("gogoc.conf");
    let c = GogocConfig {
        passwd: Secret::new(SECRET),
        server: Some("broker.example.net".into()),
        ..GogocConfig::default()
    };
    save(&path, &c, true).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(load(&path).unwrap(), c);
    // Without the password: not a secret file, and (auth any) not loadable until filled in.
    save(&path, &c, false).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(SECRET));
    let e = load(&path).unwrap_err();
    assert_eq!(e.keys(), ["passwd", "auth_method"]);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // An invalid configuration is not written.
    let bad = GogocConfig { prefixlen: 0, ..c };
    assert!(save(&path, &bad, true).is_err());
}

#[test]
fn load_errors_name_the_path() {
    let dir = TempDir::new("load");
    let missing = dir.path().join("nope.conf");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().starts_with(&missing.display().to_string()), "{e}");
    let e = load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let big = dir.path().join("big.conf");
    std::fs::write(&big, "#".repeat(64 * 1024 + 1)).unwrap();
    let e = load(&big).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    assert_eq!(e.file(), big.display().to_string());
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "auth_method=anonymous\nretry_delay=x\n").unwrap();
    let e = load(&bad).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: key \"retry_delay\"", bad.display())),
        "{e}"
    );
}

/// A scratch directory removed on drop (no extra dev-dependency needed).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nm-tsp-config-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----------------------------------------------------------------------------------------
// Properties

const KEY_NAMES: [&str; 48] = [
    "userid",
    "passwd",
    "server",
    "auth_method",
    "allow_plain",
    "host_type",
    "prefixlen",
    "if_prefix",
    "dns_server",
    "gogoc_dir",
    "gw6_dir",
    "auto_retry_connect",
    "retry_delay",
    "retry_delay_max",
    "keepalive",
    "keepalive_interval",
    "tunnel_mode",
    "if_tunnel_v6v4",
    "if_tunnel_v6udpv4",
    "if_tunnel_v4v6",
    "client_v4",
    "client_v6",
    "template",
    "proxy_client",
    "broker_list",
    "last_server",
    "always_use_same_server",
    "log_console",
    "log_stderr",
    "log_file",
    "log_syslog",
    "log_filename",
    "log_rotation",
    "log_rotation_size",
    "log_rotation_delete",
    "syslog_facility",
    "haccess_proxy_enabled",
    "haccess_web_enabled",
    "haccess_document_root",
    "hap6_proxy_enabled",
    "hap6_web_enabled",
    "hap6_document_root",
    "dslite_server",
    "dslite_client",
    "tsp_dir",
    "if_tunnel",
    "tsp_version",
    "if_source",
];

fn arb_dns_name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,6}[a-z0-9])?){0,2}"
}

fn arb_server() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        arb_dns_name(),
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| format!("[{a}]")),
    ];
    (host, proptest::option::of(1u16..)).prop_map(|(h, port)| match port {
        Some(p) => format!("{h}:{p}"),
        None => h,
    })
}

fn arb_ifname() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z][a-z0-9.-]{0,14}"]
}

fn arb_printable(max: usize) -> impl Strategy<Value = String> {
    // Printable ASCII that does not begin or end with a space (the reader trims those).
    proptest::string::string_regex(&format!("([!-~]([ -~]{{0,{max}}}[!-~])?)?")).unwrap_or_else(|_| unreachable!())
}

fn arb_config() -> impl Strategy<Value = GogocConfig> {
    let templates: Vec<&'static str> = Dialect::Gogoc
        .templates()
        .iter()
        .chain(Dialect::Gw6c.templates())
        .copied()
        .collect();
    let account = (
        any::<bool>(),
        arb_printable(20),
        arb_printable(30),
        proptest::option::of(arb_server()),
        proptest::sample::select(AuthMethod::ALL.to_vec()),
        any::<bool>(),
        any::<bool>(),
        1u8..=128,
        prop_oneof![Just(String::new()), "[a-z][a-z0-9._-]{0,14}"],
        proptest::collection::vec(arb_dns_name(), 0..3),
        prop_oneof![Just(String::new()), "/[a-zA-Z0-9_ é/.-]{0,20}[a-z]"],
    );
    let session = (
        any::<[bool; 4]>(),
        0u32..=3600,
        0u32..=3600,
        0u32..=3600,
        (
            proptest::sample::select(TunnelMode::ALL.to_vec()),
            proptest::sample::select(DatapathKind::ALL.to_vec()),
        ),
        [arb_ifname(), arb_ifname(), arb_ifname()],
        proptest::option::of(any::<Ipv4Addr>()),
        proptest::option::of(any::<Ipv6Addr>()),
        proptest::sample::select(templates),
    );
    let logging = (
        [
            "[A-Za-z0-9_./\\\\-]{1,30}",
            "[A-Za-z0-9_./-]{1,30}",
            "[a-z]{1,10}\\.log",
        ],
        [0u8..=3, 0u8..=3, 0u8..=3, 0u8..=3],
        any::<[bool; 4]>(),
        proptest::sample::select(LogRotationSize::ALL.to_vec()),
        proptest::sample::select(SyslogFacility::ALL.to_vec()),
        prop_oneof![Just(String::new()), "/srv/[a-z]{1,8}"],
        any::<(Ipv4Addr, Ipv4Addr)>(),
    );
    (account, session, logging).prop_map(|(a, s, l)| {
        let (gw6c, userid, passwd, server, auth_method, allow_plain, router, prefixlen, if_prefix, dns_server, dir) = a;
        let (
            bools,
            retry_delay,
            retry_delay_max,
            keepalive_interval,
            (tunnel_mode, datapath_kind),
            ifs,
            v4,
            v6,
            template,
        ) = s;
        let (files, levels, lbools, log_rotation_size, syslog_facility, docroot, dslite) = l;
        let [broker_list, last_server, log_filename] = files;
        let [if_v6v4, if_v6udpv4, if_v4v6] = ifs;
        let mut c = GogocConfig {
            dialect: if gw6c { Dialect::Gw6c } else { Dialect::Gogoc },
            userid,
            passwd: Secret::new(passwd),
            server,
            auth_method,
            allow_plain,
            host_type: if router { HostType::Router } else { HostType::Host },
            prefixlen,
            if_prefix,
            router_fallback_host: bools[1] != bools[3],
            dns_server,
            gogoc_dir: dir,
            auto_retry_connect: bools[0],
            retry_delay,
            retry_delay_max,
            keepalive: bools[1],
            keepalive_interval,
            keepalive_probe_after: keepalive_interval % 61,
            keepalive_probe_timeout: 1 + retry_delay % 60,
            keepalive_probes: 1 + retry_delay_max % 10,
            tunnel_mode,
            if_tunnel_v6v4: if_v6v4,
            if_tunnel_v6udpv4: if_v6udpv4,
            if_tunnel_v4v6: if_v4v6,
            datapath_kind,
            busy_poll: keepalive_interval * 277 % 1_000_001,
            client_v4: v4.map_or(AutoAddr::Auto, AutoAddr::Fixed),
            client_v6: v6.map_or(AutoAddr::Auto, AutoAddr::Fixed),
            template: template.to_owned(),
            proxy_client: bools[2],
            broker_list,
            last_server,
            always_use_same_server: bools[3],
            log: LogLevels {
                console: levels[0],
                stderr: levels[1],
                file: levels[2],
                syslog: levels[3],
            },
            log_filename,
            log_rotation: lbools[0],
            log_rotation_size,
            log_rotation_delete: lbools[1],
            syslog_facility,
            haccess_proxy_enabled: lbools[2],
            haccess_web_enabled: lbools[3],
            haccess_document_root: docroot,
            dslite_server: dslite.0,
            dslite_client: dslite.1,
        };
        // Make the cross-key rules hold.
        if c.dialect == Dialect::Gw6c {
            c.retry_delay_max = c.retry_delay;
            let d = GogocConfig::default();
            (c.dslite_server, c.dslite_client) = (d.dslite_server, d.dslite_client);
            (c.keepalive_probe_after, c.keepalive_probe_timeout, c.keepalive_probes) =
                (d.keepalive_probe_after, d.keepalive_probe_timeout, d.keepalive_probes);
            (c.datapath_kind, c.busy_poll) = (d.datapath_kind, d.busy_poll);
        } else if c.retry_delay > c.retry_delay_max {
            std::mem::swap(&mut c.retry_delay, &mut c.retry_delay_max);
        }
        if !c.dialect.templates().contains(&c.template.as_str()) {
            c.template = "linux".into();
        }
        if c.auth_method.needs_password() && c.passwd.is_empty() {
            c.passwd = Secret::new("pw");
        }
        if c.proxy_client {
            c.keepalive = false;
            if c.tunnel_mode == TunnelMode::V6UdpV4 {
                c.tunnel_mode = TunnelMode::V6V4;
            }
        }
        if c.keepalive && c.keepalive_interval == 0 {
            c.keepalive_interval = 1;
        }
        let mode = c.tunnel_mode;
        let needs = move |m: TunnelMode| mode == m || (mode == TunnelMode::V6AnyV4 && m != TunnelMode::V4V6);
        if needs(TunnelMode::V6V4) && c.if_tunnel_v6v4.is_empty() {
            c.if_tunnel_v6v4 = "sit1".into();
        }
        if needs(TunnelMode::V6UdpV4) && c.if_tunnel_v6udpv4.is_empty() {
            c.if_tunnel_v6udpv4 = "tun".into();
        }
        if needs(TunnelMode::V4V6) && c.if_tunnel_v4v6.is_empty() {
            c.if_tunnel_v4v6 = "tsp-v4v6".into();
        }
        if c.host_type == HostType::Router && c.if_prefix.is_empty() {
            c.if_prefix = "eth0".into();
        }
        if c.haccess_web_enabled && c.haccess_document_root.is_empty() {
            c.haccess_document_root = "/srv".into();
        }
        if c.tunnel_mode == TunnelMode::V4V6 {
            c.haccess_web_enabled = false;
            c.haccess_proxy_enabled = false;
        }
        c
    })
}

fn arb_keyish_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        (proptest::sample::select(KEY_NAMES.to_vec()), "\\PC{0,40}").prop_map(|(k, v)| format!("{k}={v}")),
        (proptest::sample::select(KEY_NAMES.to_vec()), "[ -~]{0,20}").prop_map(|(k, v)| format!(" {k} = {v} ")),
        "\\PC{0,60}",
        ".{0,10}",
        Just("#".to_owned()),
    ];
    (proptest::collection::vec(line, 0..30), any::<bool>())
        .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }))
}

proptest! {
    #[test]
    fn parse_never_panics(text in any::<String>()) {
        let _ = parse(&text, origin());
    }

    #[test]
    fn parse_never_panics_on_keyish_text(text in arb_keyish_text()) {
        if let Err(e) = parse(&text, origin()) {
            // Every error is printable and names the file.
            prop_assert!(e.to_string().starts_with("gogoc.conf"));
        }
    }

    #[test]
    fn to_text_round_trips(c in arb_config()) {
        prop_assert!(c.validate(origin()).is_ok(), "{:?}", c.validate(origin()));
        let text = to_text(&c);
        let back = parse(&text, origin());
        prop_assert!(back.is_ok(), "{:?}\n{}", back, text);
        prop_assert_eq!(back.ok(), Some(c.clone()));
        // Without the password it still reads (as the same config minus the password)
        // whenever no password is needed.
        if !c.auth_method.needs_password() {
            let back = parse(&to_text_with(&c, false), origin());
            prop_assert_eq!(back.ok(), Some(GogocConfig { passwd: Secret::default(), ..c }));
        }
    }
}
