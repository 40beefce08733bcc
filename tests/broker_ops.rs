//! Operating the broker (issue 14 item 5): the Prometheus metrics follow real negotiations,
//! refusals and throttled logins; `tsp-broker sessions` lists a live tspc tunnel and
//! `tsp-broker disconnect` ends it (the client notices and comes back); SIGHUP reloads the
//! accounts while a tunnel keeps carrying pings, and a bad file changes nothing; the systemd
//! notifications (READY, WATCHDOG, RELOADING, STOPPING) reach a socket the test holds; every
//! refusal is logged with its user and reason and never the password.
//!
//! The namespace tests need root (CI is root) and print a skip line otherwise; the
//! notification and TCP-disconnect tests run anywhere.

mod common;
mod netns;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc, Signal, require_root};
use tsp_broker::accounts::Accounts;
use tsp_proto::secret::Secret;

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
const BROKER_V6: &str = "2001:db8:b::1";
const REALM: &str = "ops";
const METRICS: &str = "127.0.0.1:9653";
/// A wrong password: it must never appear in the broker's log.
const WRONG: &str = "not-the-password-7731";

/// An accounts file line for `user` with password `<user>-secret`.
fn account(user: &str) -> String {
    Accounts::line(user, REALM, &Secret::new(format!("{user}-secret"))).unwrap()
}

/// The broker's TOML: anonymous and DIGEST-MD5 (the accounts file holds `users`), metrics on
/// 127.0.0.1:9653 inside its namespace, the control socket in the lab's directory.
fn broker_conf(lab: &Lab, users: &[&str], extra: &str) -> std::path::PathBuf {
    let accounts = lab
        .file("accounts", &users.iter().map(|u| account(u)).collect::<String>())
        .unwrap();
    let toml = format!(
        "listen = [\"[::]:3653\"]\nauth = [\"anonymous\", \"digest-md5\"]\nrealm = \"{REALM}\"\n\
         accounts_file = \"{}\"\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\n\
         keepalive_min = 1\nmetrics_listen = \"{METRICS}\"\ncontrol_socket = \"{}\"\n{extra}",
        accounts.display(),
        lab.dir().join("control").display()
    );
    lab.file("broker.toml", &toml).unwrap()
}

fn start_broker(b: &Host, conf: &Path) -> Proc {
    let p = b.spawn(BROKER, &["-c", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("listening", 10 * SEC).unwrap();
    p
}

/// tspc with these gogoc.conf lines, up.
fn start_client(lab: &Lab, host: &Host, name: &str, lines: &[&str]) -> Proc {
    let conf = lab.file(&format!("{name}.conf"), &(lines.join("\n") + "\n")).unwrap();
    let p = host.spawn(TSPC, &["-f", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("(up)", 10 * SEC).unwrap();
    p
}

/// `tspc --dry-run` with these lines: whether it got an offer, and what it printed.
fn dry_run(lab: &Lab, host: &Host, name: &str, lines: &[&str]) -> (bool, String) {
    let conf = lab.file(&format!("{name}.conf"), &(lines.join("\n") + "\n")).unwrap();
    let out = host
        .run_timeout(TSPC, &["-f", conf.to_str().unwrap(), "--dry-run"], 20 * SEC)
        .unwrap();
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

fn digest(server: &str, user: &str, password: &str, mode: &str) -> Vec<String> {
    vec![
        format!("server={server}"),
        "auth_method=digest-md5".into(),
        format!("userid={user}"),
        format!("passwd={password}"),
        format!("tunnel_mode={mode}"),
        "keepalive_interval=1".into(),
        "retry_delay=1".into(),
        "retry_delay_max=2".into(),
    ]
}

fn lines(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `GET /metrics` from inside `host`'s namespace (a thread of this process joins it).
fn scrape(host: &Host) -> String {
    let ns = std::fs::File::open(format!("/run/netns/{}", host.ns())).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect(METRICS).unwrap();
        s.set_read_timeout(Some(5 * SEC)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: broker\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: text/plain; version=0.0.4"), "{out}");
        out
    })
    .join()
    .unwrap()
}

/// The value of one sample (`name{labels}` exactly as exposed); panics when it is missing.
fn value(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{metrics}"))
}

fn sessions(mode: &str, auth: &str) -> String {
    format!("tsp_broker_sessions{{mode=\"{mode}\",auth=\"{auth}\"}}")
}

fn refusals(reason: &str) -> String {
    format!("tsp_broker_refusals_total{{reason=\"{reason}\"}}")
}

/// `tsp-broker -c conf ARGS` from the test's own namespace (the control socket is a file).
fn ctl(conf: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BROKER)
        .arg("-c")
        .arg(conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The broker's log lines that report a refusal.
fn refusal_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains("client refused")).collect()
}

/// Two clients (a DIGEST-MD5 user over v6udpv4, an anonymous one over v6v4) move the session
/// gauges, the established counters and the traffic counters; five wrong passwords, a v6v4
/// request from behind a NAT and a client beyond `max_tunnels` move the refusal counters by
/// reason, the later wrong passwords the throttle's; each refusal is logged once with its
/// user and reason, and the wrong password nowhere.
#[test]
fn metrics_follow_negotiations_refusals_and_throttled_logins() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("ops_metrics").unwrap();
    let [c, d, b] = ["c", "d", "b"].map(|h| lab.host(h).unwrap());
    lab.link(&c, &["192.0.2.2/24"], &b, &["192.0.2.1/24"]).unwrap();
    lab.link(&d, &["203.0.113.2/24"], &b, &["203.0.113.1/24"]).unwrap();
    let conf = broker_conf(&lab, &["alice"], "max_tunnels = 2\n");
    let broker = start_broker(&b, &conf);

    let before = scrape(&b);
    for (mode, auth) in [("v6udpv4", "digest-md5"), ("v6v4", "anonymous")] {
        assert_eq!(value(&before, &sessions(mode, auth)), 0);
    }
    assert_eq!(value(&before, &refusals("auth_failed")), 0);
    assert_eq!(value(&before, "tsp_broker_max_tunnels"), 2);
    // v6v4 through a NAT (the reported address is not the one the broker sees): refused.
    let (ok, out) = dry_run(
        &lab,
        &c,
        "nat",
        &[
            "server=192.0.2.1",
            "auth_method=anonymous",
            "tunnel_mode=v6v4",
            "client_v4=192.0.2.77",
        ],
    );
    assert!(
        !ok && out.contains("303"),
        "v6v4 through a NAT was not refused with 303:\n{out}"
    );

    let _alice = start_client(
        &lab,
        &c,
        "alice",
        &lines(&digest("192.0.2.1", "alice", "alice-secret", "v6udpv4")),
    );
    let _anon = start_client(
        &lab,
        &d,
        "anon",
        &["server=203.0.113.1", "auth_method=anonymous", "tunnel_mode=v6v4"],
    );
    assert!(c.ping(BROKER_V6, 3, 2), "no ping through alice's tunnel");
    assert!(d.ping(BROKER_V6, 3, 2), "no ping through the anonymous tunnel");
    let up = scrape(&b);
    assert_eq!(value(&up, &sessions("v6udpv4", "digest-md5")), 1, "{up}");
    assert_eq!(value(&up, &sessions("v6v4", "anonymous")), 1, "{up}");
    assert_eq!(value(&up, &sessions("v6v4", "digest-md5")), 0, "{up}");
    assert_eq!(
        value(
            &up,
            "tsp_broker_tunnels_established_total{mode=\"v6udpv4\",auth=\"digest-md5\"}"
        ),
        1
    );
    assert_eq!(
        value(
            &up,
            "tsp_broker_tunnels_established_total{mode=\"v6v4\",auth=\"anonymous\"}"
        ),
        1
    );
    assert!(
        value(&up, "tsp_broker_negotiations_total{transport=\"udp\"}") >= 2,
        "{up}"
    );
    assert_eq!(
        value(
            &up,
            "tsp_broker_logins_total{mechanism=\"digest-md5\",result=\"success\"}"
        ),
        1
    );
    // Six echo requests went in, their replies came out (and keepalives both ways).
    for dir in ["from_clients", "to_clients"] {
        let packets = value(&up, &format!("tsp_broker_tunnel_packets_total{{direction=\"{dir}\"}}"));
        let bytes = value(&up, &format!("tsp_broker_tunnel_bytes_total{{direction=\"{dir}\"}}"));
        assert!(packets >= 6, "{dir}: {packets} packets\n{up}");
        assert!(bytes >= packets * 48, "{dir}: {bytes} bytes for {packets} packets");
    }

    // Refusals: wrong passwords (the fourth and fifth answers are held back), and a third
    // client (the broker is full).
    for i in 0..5 {
        let (ok, out) = dry_run(
            &lab,
            &c,
            &format!("wrong{i}"),
            &lines(&digest("192.0.2.1", "alice", WRONG, "v6udpv4")),
        );
        assert!(!ok, "a wrong password got a tunnel:\n{out}");
    }
    let (ok, out) = dry_run(
        &lab,
        &d,
        "full",
        &[
            "server=203.0.113.1",
            "auth_method=anonymous",
            "tunnel_mode=v6udpv4",
            "client_v4=203.0.113.99",
        ],
    );
    assert!(
        !ok && out.contains("301"),
        "a third tunnel was not refused with 301:\n{out}"
    );

    let after = scrape(&b);
    assert_eq!(value(&after, &refusals("auth_failed")), 5, "{after}");
    assert_eq!(value(&after, &refusals("nat")), 1, "{after}");
    assert_eq!(value(&after, &refusals("capacity")), 1, "{after}");
    assert_eq!(value(&after, &refusals("bad_request")), 0, "{after}");
    assert_eq!(
        value(
            &after,
            "tsp_broker_logins_total{mechanism=\"digest-md5\",result=\"failure\"}"
        ),
        5
    );
    // Three failures of a user are free, the fourth and fifth are delayed.
    assert_eq!(value(&after, "tsp_broker_throttled_logins_total"), 2, "{after}");
    assert_eq!(value(&after, &sessions("v6udpv4", "digest-md5")), 1);
    assert_eq!(value(&after, &sessions("v6v4", "anonymous")), 1);
    for dir in ["from_clients", "to_clients"] {
        let sample = format!("tsp_broker_tunnel_packets_total{{direction=\"{dir}\"}}");
        assert!(value(&after, &sample) >= value(&up, &sample), "{sample} went back");
    }

    // The log: one line per refusal, naming user, peer and reason; no password anywhere.
    let log = broker.output();
    assert!(
        !log.contains(WRONG),
        "the wrong password is in the broker's log:\n{log}"
    );
    assert!(!log.contains("alice-secret"), "a password is in the broker's log");
    let refused = refusal_lines(&log);
    assert_eq!(refused.len(), 7, "{refused:#?}");
    let auth: Vec<_> = refused
        .iter()
        .filter(|l| l.contains("reason=\"auth_failed\""))
        .collect();
    assert_eq!(auth.len(), 5, "{refused:#?}");
    for l in &auth {
        assert!(
            l.contains("user=\"alice\"") && l.contains("peer=192.0.2.2:") && l.contains("wrong password"),
            "{l}"
        );
    }
    assert!(
        auth.iter().filter(|l| l.contains("answer delayed")).count() == 2,
        "the throttled answers do not say so: {auth:#?}"
    );
    let nat = refused.iter().find(|l| l.contains("reason=\"nat\"")).unwrap();
    assert!(
        nat.contains("user=\"(anonymous)\"") && nat.contains("status=303") && nat.contains("192.0.2.77"),
        "{nat}"
    );
    let full = refused.iter().find(|l| l.contains("reason=\"capacity\"")).unwrap();
    assert!(
        full.contains("WARN") && full.contains("peer=203.0.113.2:") && full.contains("max_tunnels = 2"),
        "{full}"
    );
}

/// `tsp-broker sessions` lists alice's live v6udpv4 tunnel; `tsp-broker disconnect alice`
/// ends it: gone from the list and from the datapath (pings stop), counted as disconnected;
/// tspc notices through its keepalive and negotiates again, getting the same address.
#[test]
fn sessions_lists_a_tunnel_and_disconnect_ends_it() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("ops_disconnect").unwrap();
    let [c, b] = ["c", "b"].map(|h| lab.host(h).unwrap());
    lab.link(&c, &["192.0.2.2/24"], &b, &["192.0.2.1/24"]).unwrap();
    let conf = broker_conf(&lab, &["alice"], "");
    let broker = start_broker(&b, &conf);
    let client = start_client(
        &lab,
        &c,
        "alice",
        &lines(&digest("192.0.2.1", "alice", "alice-secret", "v6udpv4")),
    );
    assert!(c.ping(BROKER_V6, 2, 2));

    let out = ctl(&conf, &["sessions"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "a header and alice:\n{table}");
    assert!(rows[0].starts_with("USER") && rows[0].contains("BYTES-IN"), "{table}");
    let cols: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        ["alice", "up", "v6udpv4/udp", cols[3], "2001:db8:b::2"],
        "{table}"
    );
    assert!(cols[3].starts_with("192.0.2.2:"), "{table}");
    assert!(
        cols[7].parse::<u64>().unwrap() > 0,
        "no bytes from alice counted:\n{table}"
    );
    let json = ctl(&conf, &["sessions", "--json"]);
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.contains("\"user\": \"alice\"") && json.contains("\"established\": true"),
        "{json}"
    );

    // Only root and the broker's own user are answered: with the file mode out of the way,
    // nobody (uid 65534) still gets a refusal from the peer-credential check.
    use std::os::unix::fs::PermissionsExt;
    let socket = lab.dir().join("control");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BROKER, "-c"])
        .arg(&conf)
        .arg("sessions")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only root and the broker's own user"),
        "another user was answered: {out:?}"
    );
    assert!(broker.output().contains("request from another user refused uid=65534"));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mark = client.mark();
    let t0 = Instant::now();
    let out = ctl(&conf, &["disconnect", "alice"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("disconnected alice: 1 session"),
        "{out:?}"
    );
    // Out of the list and out of the datapath at once (tspc needs a few keepalives to notice).
    let table = String::from_utf8_lossy(&ctl(&conf, &["sessions"]).stdout).into_owned();
    assert_eq!(table.lines().count(), 1, "alice still listed:\n{table}");
    assert!(!c.ping(BROKER_V6, 1, 1), "the disconnected tunnel still carries pings");
    assert!(
        broker.output().contains("disconnected by the operator user=\"alice\""),
        "{}",
        broker.output()
    );
    let metrics = scrape(&b);
    assert_eq!(
        value(&metrics, "tsp_broker_tunnels_ended_total{reason=\"disconnected\"}"),
        1
    );
    assert_eq!(value(&metrics, &sessions("v6udpv4", "digest-md5")), 0);

    // tspc finds the tunnel dead and comes back with the same address.
    client
        .wait_for_output_since(mark, "down:", 15 * SEC)
        .unwrap_or_else(|e| panic!("tspc did not notice: {e}"));
    client
        .wait_for_output_since(mark, "(up)", 15 * SEC)
        .unwrap_or_else(|e| panic!("tspc did not negotiate again: {e}"));
    println!("disconnect: tspc up again {:.1?} after the disconnect", t0.elapsed());
    assert!(
        c.ping_until(BROKER_V6, 5 * SEC).is_some(),
        "no ping after the new negotiation"
    );
    assert!(wait_for(5 * SEC, || {
        String::from_utf8_lossy(&ctl(&conf, &["sessions"]).stdout).contains("2001:db8:b::2")
    }));

    // Unknown users and a broker that is not there are clear errors.
    let out = ctl(&conf, &["disconnect", "bob"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no session of \"bob\""),
        "{out:?}"
    );
    broker.signal(Signal::Term).unwrap();
    assert!(broker.wait_exit(5 * SEC).is_some());
    assert!(
        !lab.dir().join("control").exists(),
        "the control socket was left behind"
    );
    let out = ctl(&conf, &["sessions"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no broker listens on"), "{err}");
}

/// SIGHUP with a new user in the accounts file lets that user in while an existing tunnel
/// keeps carrying pings; a change only a restart can apply is refused (naming the key) and
/// changes nothing; a broken file changes nothing.
#[test]
fn sighup_reloads_accounts_without_dropping_tunnels() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("ops_sighup").unwrap();
    let [c, d, b] = ["c", "d", "b"].map(|h| lab.host(h).unwrap());
    lab.link(&c, &["192.0.2.2/24"], &b, &["192.0.2.1/24"]).unwrap();
    lab.link(&d, &["203.0.113.2/24"], &b, &["203.0.113.1/24"]).unwrap();
    let conf = broker_conf(&lab, &["alice"], "max_tunnels = 10\n");
    let broker = start_broker(&b, &conf);
    let _alice = start_client(
        &lab,
        &c,
        "alice",
        &lines(&digest("192.0.2.1", "alice", "alice-secret", "v6udpv4")),
    );
    assert!(c.ping(BROKER_V6, 2, 2));
    let carol = digest("203.0.113.1", "carol", "carol-secret", "v6udpv4");
    let (ok, _) = dry_run(&lab, &d, "carol0", &lines(&carol));
    assert!(!ok, "carol is not a user yet");

    let since = alice_since(&conf);
    // A steady ping through alice's tunnel across every reload.
    let pinger = c
        .spawn("ping", &["-6", "-n", "-i", "0.1", "-W", "1", BROKER_V6])
        .unwrap();
    pinger.wait_for_output("icmp_seq=3 ", 5 * SEC).unwrap();

    // Carol added; the limits changed too.
    std::fs::write(lab.dir().join("accounts"), account("alice") + &account("carol")).unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("max_tunnels = 10", "max_tunnels = 20")).unwrap();
    let mark = broker.mark();
    broker.signal(Signal::Hup).unwrap();
    broker
        .wait_for_output_since(mark, "configuration reloaded: changed max_tunnels", 5 * SEC)
        .unwrap();
    let (ok, out) = dry_run(&lab, &d, "carol1", &lines(&carol));
    assert!(ok, "carol was not let in after the reload:\n{out}");
    assert_eq!(value(&scrape(&b), "tsp_broker_max_tunnels"), 20);

    // A key only a restart can change: refused, named, nothing applied.
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("client_pool = \"2001:db8:b::/64\"", "client_pool = \"2001:db8:d::/64\"")
            .replace("max_tunnels = 20", "max_tunnels = 30"),
    )
    .unwrap();
    let mark = broker.mark();
    broker.signal(Signal::Hup).unwrap();
    broker
        .wait_for_output_since(mark, "client_pool cannot change while the broker runs", 5 * SEC)
        .unwrap();
    assert_eq!(
        value(&scrape(&b), "tsp_broker_max_tunnels"),
        20,
        "a refused reload applied"
    );

    // A broken file: nothing changes, carol still gets in.
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, "listen = [\"[::]:3653\"\nthis is not TOML\n").unwrap();
    let mark = broker.mark();
    broker.signal(Signal::Hup).unwrap();
    broker
        .wait_for_output_since(mark, "configuration not reloaded", 5 * SEC)
        .unwrap();
    let (ok, out) = dry_run(&lab, &d, "carol2", &lines(&carol));
    assert!(ok, "a broken file changed the running configuration:\n{out}");

    let metrics = scrape(&b);
    assert_eq!(
        value(&metrics, "tsp_broker_config_reloads_total{result=\"success\"}"),
        1
    );
    assert_eq!(
        value(&metrics, "tsp_broker_config_reloads_total{result=\"failure\"}"),
        2
    );
    // Alice's tunnel never dropped: the same session as before the reloads, and the pings
    // came back (the last one may have been in flight when ping was stopped).
    std::fs::write(&conf, good).unwrap();
    assert_eq!(alice_since(&conf), since, "alice's session was replaced");
    let seq = pinger.output().matches("icmp_seq=").count();
    pinger
        .wait_for_output(&format!("icmp_seq={} ", seq + 5), 5 * SEC)
        .unwrap();
    pinger.signal(Signal::Int).unwrap();
    pinger.wait_exit(5 * SEC).unwrap();
    let summary = pinger.output();
    let count = |what: &str| -> u64 {
        summary
            .lines()
            .find_map(|l| l.split(", ").find_map(|f| f.strip_suffix(what)?.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no ping summary:\n{summary}"))
    };
    let (sent, got) = (count(" packets transmitted"), count(" received"));
    assert!(
        sent >= 5 && got + 1 >= sent,
        "pings through alice's tunnel were lost across the reloads:\n{summary}"
    );
}

/// When alice's session began, as `tsp-broker sessions --json` says.
fn alice_since(conf: &Path) -> String {
    let out = ctl(conf, &["sessions", "--json"]);
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = json
        .find("\"user\": \"alice\"")
        .unwrap_or_else(|| panic!("alice is not listed:\n{json}"));
    json[at..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"since\": "))
        .unwrap_or_else(|| panic!("no since:\n{json}"))
        .trim_end_matches(',')
        .to_owned()
}

/// Under a fake systemd (a datagram socket the test binds as NOTIFY_SOCKET, WATCHDOG_USEC
/// set), the broker says READY=1 once it listens, pings the watchdog at half the timeout,
/// brackets a SIGHUP with RELOADING=1 and READY=1 (a bad file too), and says STOPPING=1 on
/// SIGTERM before it exits.
#[test]
fn systemd_readiness_watchdog_reload_and_stop() {
    let dir = common::scratch_dir("ops_notify");
    let socket = dir.join("notify");
    let systemd = UnixDatagram::bind(&socket).unwrap();
    systemd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let conf = dir.join("broker.toml");
    let toml = "listen = [\"127.0.0.1:0\"]\ndatapath = false\ncontrol_socket = \"\"\n";
    std::fs::write(&conf, toml).unwrap();
    let mut broker = Command::new(BROKER)
        .arg("-c")
        .arg(&conf)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("broker.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(broker.id() as i32);
    let mut seen: Vec<String> = Vec::new();
    let mut next = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + 5 * SEC;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = systemd.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(m.clone());
                if pred(&m) {
                    return m;
                }
            }
        }
        panic!("no {what} within 5 s; got {seen:#?}");
    };
    let ready = next("READY=1", &|m| m.lines().any(|l| l == "READY=1"));
    assert!(ready.contains("STATUS=0 tunnel(s) of at most 1000"), "{ready}");
    // Pings every 200 ms: several within a second.
    let start = Instant::now();
    for _ in 0..3 {
        next("WATCHDOG=1", &|m| m == "WATCHDOG=1");
    }
    assert!(
        start.elapsed() < 2 * SEC,
        "watchdog pings too slow: {:?}",
        start.elapsed()
    );

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let reloading = next("RELOADING=1", &|m| m.lines().any(|l| l == "RELOADING=1"));
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "{reloading}"
    );
    next("READY=1 after the reload", &|m| m.lines().any(|l| l == "READY=1"));

    // A broken file: the same bracket, and the broker runs on.
    std::fs::write(&conf, "listen = 3\n").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    next("RELOADING=1", &|m| m.lines().any(|l| l == "RELOADING=1"));
    next("READY=1 after a failed reload", &|m| m.lines().any(|l| l == "READY=1"));
    next("WATCHDOG=1 after a failed reload", &|m| m == "WATCHDOG=1");
    assert!(broker.try_wait().unwrap().is_none(), "a broken file stopped the broker");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    next("STOPPING=1", &|m| m.lines().any(|l| l == "STOPPING=1"));
    let deadline = Instant::now() + 5 * SEC;
    let status = loop {
        if let Some(s) = broker.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the broker did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(log.contains("configuration not reloaded"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tunnel negotiated over TCP (gogoc keeps the connection for the tunnel's lifetime):
/// disconnecting its user through the control socket closes the connection, ends the session
/// and is counted; the metrics show it. In-process, on loopback.
#[tokio::test]
async fn disconnect_closes_a_tcp_tunnels_connection() {
    use common::*;
    use tokio::io::AsyncReadExt;
    use tsp_broker::control::{self, Reply, Request};
    use tsp_client::net::{Conn, negotiate};
    use tsp_proto::types::{AuthMethod, TunnelMode};

    let dir = scratch_dir("ops_tcp_disconnect");
    let control_path = dir.join("control");
    let extra = format!("udp = false\ncontrol_socket = \"{}\"", control_path.display());
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", &extra), None).await;
    let shared = broker.running.shared.clone();
    let opts = options(
        TunnelMode::V6V4,
        AuthMethod::DigestMd5,
        "alice",
        "wonder land",
        dir.join("k"),
    );
    let est = negotiate(&broker.server(), &opts).await.unwrap();
    let Conn::Tcp(conn) = est.conn else {
        panic!("not over TCP")
    };
    let mut stream = conn.into_stream();
    assert!(eventually(|| shared.lock().sessions().any(|s| s.established)).await);

    let ask = |req: Request| {
        let path = control_path.clone();
        tokio::task::spawn_blocking(move || control::ask(&path, &req))
    };
    let Ok(Ok(Reply::Sessions(list))) = ask(Request::Sessions).await else {
        panic!("no session list")
    };
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].user.as_deref(),
            list[0].transport.as_str(),
            list[0].mode.as_str()
        ),
        (Some("alice"), "tcp", "v6v4")
    );
    let reply = ask(Request::Disconnect { user: "alice".into() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply,
        Reply::Disconnected {
            user: "alice".into(),
            sessions: 1
        }
    );
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(2 * SEC, stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the tunnel's TCP connection stayed open: {read:?}"
    );
    assert_eq!(shared.lock().sessions().count(), 0);
    let text = shared.metrics_text();
    assert!(
        text.contains("tsp_broker_tunnels_ended_total{reason=\"disconnected\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("tsp_broker_sessions{mode=\"v6v4\",auth=\"digest-md5\"} 0\n"),
        "{text}"
    );
    assert_eq!(
        ask(Request::Disconnect { user: "alice".into() })
            .await
            .unwrap()
            .unwrap(),
        Reply::Error("no session of \"alice\"".into())
    );
}

/// Refusals before any login are counted by reason too: an unsupported version, a message
/// that is not TSP, and redirector mode. In-process, on loopback, over TCP.
#[tokio::test]
async fn refusals_before_the_login_are_counted_by_reason() {
    use common::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tsp_broker::metrics::RefusalReason;

    async fn say(addr: std::net::SocketAddr, line: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(line).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(5 * SEC, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
    let dir = scratch_dir("ops_refusals");
    let extra = "udp = false
control_socket = \"\"\nversions = [\"2.0.2\"]";
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", extra), None).await;
    let metrics = broker.running.shared.metrics.clone();
    assert!(say(broker.addr, b"VERSION=2.0.0\r\n").await.starts_with("302"));
    assert_eq!(metrics.refusals(RefusalReason::Version), 1);
    say(broker.addr, b"HELLO broker\r\n").await;
    assert_eq!(metrics.refusals(RefusalReason::BadRequest), 1);

    let redirector = start_broker(
        &broker_toml(
            &dir,
            "127.0.0.1:0",
            "udp = false\ncontrol_socket = \"\"\nredirect = [\"192.0.2.9\"]",
        ),
        None,
    )
    .await;
    let answer = say(redirector.addr, b"VERSION=2.0.2\r\n").await;
    assert!(answer.starts_with("1200") && answer.contains("192.0.2.9"), "{answer}");
    let text = redirector.running.shared.metrics_text();
    assert!(
        text.contains("tsp_broker_refusals_total{reason=\"redirected\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("tsp_broker_negotiations_total{transport=\"tcp\"} 1\n"),
        "{text}"
    );
}
