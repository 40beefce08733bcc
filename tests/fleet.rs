//! A fleet of brokers sharing one real PostgreSQL (started here, its data in a temporary
//! directory, run as an unprivileged user). Skipped, saying why, without PostgreSQL
//! (`apt install postgresql`; tests/run.sh installs it) or, for the namespace test, without root.
//!
//! `fleet_serves_fails_over_and_outlives_the_database` (network namespaces):
//! ```text
//!   c (tspc) 203.0.113.2 ---- 203.0.113.1 net ---- 192.0.2.1/.10  master (redirects to the live brokers)
//!                                          |------ 198.18.11.1/.11 broker A   } same pools, same
//!                                          '------ 198.18.12.1/.12 broker B   } database
//! ```
//! `two_brokers_race_for_the_last_prefix`: two brokers on loopback (no namespaces, no root), one
//! free prefix, two routers asking at once; the winner's prefix again from a third broker over
//! TCP; its account disabled and enabled; the database's allocation raced directly; an
//! overlapping block refused by the schema itself.
mod netns;

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::{Host, Lab, Proc};

const SEC: Duration = Duration::from_secs(1);
const TSPC: &str = env!("CARGO_BIN_EXE_tspc");
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A private PostgreSQL server: data and unix socket in a temporary directory, no TCP.
struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    /// The unprivileged user it runs as (postgres refuses root).
    uid: u32,
    gid: u32,
}

/// The newest installed PostgreSQL's bin directory.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// Starts one; `None` when PostgreSQL is not installed (the caller skips, saying so). Any
    /// other trouble fails the test.
    fn start(name: &str) -> Option<Postgres> {
        let Some(bin) = postgres_bin() else {
            println!("skipped: PostgreSQL is not installed (apt install postgresql; tests/run.sh does)");
            return None;
        };
        Some(Self::init(bin, name).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}")))
    }

    fn init(bin: PathBuf, name: &str) -> Result<Postgres, String> {
        let (me, my_gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        // nobody:nogroup when root; else the user running the test.
        let (uid, gid) = if me == 0 { (65534, 65534) } else { (me, my_gid) };
        let dir = std::env::temp_dir().join(format!("nm-tsp-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        let pg = Postgres { bin, dir, uid, gid };
        let data = pg.dir.join("data");
        let out = pg
            .cmd("initdb")
            .args(["-D", data.to_str().unwrap(), "-A", "trust", "-U", "tsp", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        pg.ctl_start()?;
        Ok(pg)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.uid(self.uid).gid(self.gid).current_dir(&self.dir);
        c.stdin(Stdio::null());
        c
    }

    fn ctl_start(&self) -> Result<(), String> {
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c synchronous_commit=off",
            self.dir.display()
        );
        let out = self
            .cmd("pg_ctl")
            .args(["-D", "data", "-o", &opts, "-l", "log", "-w", "-t", "30", "start"])
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Stops the server at once (connections cut, as in a crash or a network loss).
    fn stop(&self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["-D", "data", "-m", "immediate", "-w", "stop"])
            .output();
    }

    /// The `database` key of a broker using it.
    fn conninfo(&self) -> String {
        format!("host={} user=tsp dbname=postgres", self.dir.display())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tsp-broker -c conf db <args>` with `stdin` fed; its stdout, or a panic with its stderr.
fn db_cmd(conf: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(BROKER)
        .args(["-c", conf.to_str().unwrap(), "db"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tsp-broker db {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a gogoc.conf (mode 0600: it holds a password).
fn client_conf(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The last value of a `  key:  value` line of tspc's tunnel description in `text`.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .next_back()
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
}

/// The broker named by the last "tunnel negotiated with <server>" line of `text`.
fn negotiated_with(text: &str) -> Option<String> {
    field(text, "tunnel negotiated with ")
}

fn output_since(p: &Proc, mark: usize) -> String {
    let out = p.output();
    out.get(mark.min(out.len())..).unwrap_or_default().to_string()
}

/// The broker configuration of the fleet's members (same pools, same database).
fn member_toml(db: &str, id: &str, listen: &str, extra: &str) -> String {
    format!(
        "listen = [\"{listen}:3653\"]\nauth = [\"digest-md5\"]\nrealm = \"fleet\"\ntunnel_modes = [\"v6udpv4\"]\n\
         database = \"{db}\"\nfleet_id = \"{id}\"\n\
         server_ipv6 = \"2001:db8:b::1\"\nclient_pool = \"2001:db8:b::/64\"\nprefix_pool = \"2001:db8:c000::/40\"\n\
         prefix_length_min = 56\nprefix_length_max = 56\nkeepalive_min = 1\n{extra}"
    )
}

/// A broker of the fleet on `host`; waits until it listens.
fn start_member(host: &Host, conf: &Path) -> Proc {
    let p = host.spawn(BROKER, &["-v", "-c", conf.to_str().unwrap()]).unwrap();
    p.wait_for_output("listening", 10 * SEC)
        .unwrap_or_else(|e| panic!("{e}:\n{}", p.output()));
    p
}

/// The master's last logged list of live brokers, once it satisfies `ok`.
fn master_list(master: &Proc, since: usize, timeout: Duration, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let parse = |out: &str| -> Option<Vec<String>> {
        let line = out.lines().rfind(|l| l.contains("live brokers"))?;
        let list = line.split("brokers=[").nth(1)?.split(']').next()?;
        Some(
            list.split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    };
    wait_for(timeout, || parse(&output_since(master, since)).filter(|l| ok(l)))
        .unwrap_or_else(|| panic!("the master never listed the brokers as expected:\n{}", master.output()))
}

// ---------------------------------------------------------------------------------------------
// The fleet end to end

#[test]
fn fleet_serves_fails_over_and_outlives_the_database() {
    if !netns::require_root() {
        return;
    }
    let Some(pg) = Postgres::start("fleet") else { return };
    let started = Instant::now();
    let lab = Lab::new("fleet_serves_fails_over_and_outlives_the_database").unwrap();
    let [c, net, m, a, b, lan] = ["c", "net", "master", "a", "b", "lan"].map(|h| lab.host(h).unwrap());
    lab.link(&c, &["203.0.113.2/24"], &net, &["203.0.113.1/24"]).unwrap();
    lab.link(&m, &["192.0.2.10/24"], &net, &["192.0.2.1/24"]).unwrap();
    lab.link(&a, &["198.18.11.11/24"], &net, &["198.18.11.1/24"]).unwrap();
    lab.link(&b, &["198.18.12.12/24"], &net, &["198.18.12.1/24"]).unwrap();
    net.enable_forwarding().unwrap();
    c.route_add("default", "203.0.113.1").unwrap();
    m.route_add("default", "192.0.2.1").unwrap();
    a.route_add("default", "198.18.11.1").unwrap();
    b.route_add("default", "198.18.12.1").unwrap();
    // alice's LAN, where her router advertises the delegated prefix.
    let (_, lan0) = lab.link(&lan, &[], &c, &[]).unwrap();

    let dir = lab.dir().to_path_buf();
    let db = pg.conninfo();
    let conf_a = lab
        .file(
            "a.toml",
            &member_toml(&db, "a", "198.18.11.11", "tun_name = \"tspa\"\ntun4_name = \"tspa4\"\n"),
        )
        .unwrap();
    let conf_b = lab
        .file(
            "b.toml",
            &member_toml(&db, "b", "198.18.12.12", "tun_name = \"tspb\"\ntun4_name = \"tspb4\"\n"),
        )
        .unwrap();
    let conf_m = lab
        .file(
            "master.toml",
            &format!(
                "listen = [\"192.0.2.10:3653\"]\ndatabase = \"{db}\"\nfleet_id = \"master\"\nfleet_master = true\n\
                 datapath = false\n"
            ),
        )
        .unwrap();
    // The schema and the users, as an operator would make them; no password reaches argv.
    assert!(db_cmd(&conf_a, &["migrate"], "").contains("version 1"));
    db_cmd(&conf_a, &["add-user", "alice"], "alice-password\n");
    db_cmd(&conf_a, &["add-user", "bob"], "bob-password\n");
    let users = db_cmd(&conf_a, &["list-users"], "");
    assert!(
        users.contains("alice\tfleet\tenabled") && !users.contains("password"),
        "{users}"
    );

    let broker_a = start_member(&a, &conf_a);
    let broker_b = start_member(&b, &conf_b);
    let master = m.spawn(BROKER, &["-v", "-c", conf_m.to_str().unwrap()]).unwrap();
    let listed = master_list(&master, 0, 10 * SEC, |l| l.len() == 2);
    println!("fleet up after {:?}: master lists {listed:?}", started.elapsed());

    // alice, a router, through the master to a live broker.
    let home = dir.join("alice-home");
    std::fs::create_dir_all(&home).unwrap();
    let alice_conf = client_conf(
        &dir,
        "alice.conf",
        &[
            "server=192.0.2.10".into(),
            "auth_method=digest-md5".into(),
            "userid=alice".into(),
            "passwd=alice-password".into(),
            "host_type=router".into(),
            "prefixlen=56".into(),
            format!("if_prefix={lan0}"),
            "tunnel_mode=v6udpv4".into(),
            "keepalive_interval=1".into(),
            "retry_delay=1".into(),
            format!("gogoc_dir={}", home.display()),
        ],
    );
    let t = Instant::now();
    let alice = c.spawn(TSPC, &["-f", alice_conf.to_str().unwrap()]).unwrap();
    alice.wait_for_output("(up)", 20 * SEC).unwrap();
    let first_up = t.elapsed();
    let out = alice.output();
    let served_by = negotiated_with(&out).unwrap_or_else(|| panic!("no negotiation line:\n{out}"));
    let address = field(&out, "client:").unwrap();
    let prefix = field(&out, "prefix:").unwrap_or_else(|| panic!("no prefix:\n{out}"));
    assert!(out.contains("broker redirects"), "not redirected by the master:\n{out}");
    let (home_broker, other, other_proc, home_conf, home_host) = match served_by.as_str() {
        "198.18.11.11" => ("198.18.11.11", "198.18.12.12", &broker_b, &conf_a, &a),
        "198.18.12.12" => ("198.18.12.12", "198.18.11.11", &broker_a, &conf_b, &b),
        s => panic!("served by {s}, not a fleet broker:\n{out}"),
    };
    assert!(
        c.ping_until("2001:db8:b::1", 5 * SEC).is_some(),
        "no ping through the tunnel"
    );
    println!("alice up on {home_broker} after {first_up:?}: {address}, prefix {prefix}");
    // What routing glue reads: alice's address and prefix go to her home broker.
    let routes_via = |broker: &str| {
        wait_for(5 * SEC, || {
            let routes = db_cmd(&conf_a, &["routes"], "");
            let want = [format!("{address}/128 {broker} "), format!("{prefix} {broker} ")];
            want.iter().all(|w| routes.contains(w.as_str())).then_some(routes)
        })
        .unwrap_or_else(|| panic!("no routes via {broker}: {}", db_cmd(&conf_a, &["routes"], "")))
    };
    routes_via(home_broker);
    // And the home broker's host routes exactly alice's blocks to its TUN device, for a routing
    // daemon to announce.
    let host_routes = |host: &Host, tun: &str| {
        wait_for(5 * SEC, || {
            let routes = host.routes_v6().ok()?;
            let has = |dst: &str| routes.iter().any(|r| r.starts_with(&format!("{dst} dev {tun}")));
            (has(&address) && has(&prefix)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} does not route {address} and {prefix} to {tun}: {:?}",
                host.name(),
                host.routes_v6()
            )
        })
    };

    if home_broker == "198.18.11.11" {
        host_routes(&a, "tspa");
    } else {
        host_routes(&b, "tspb");
    }

    // The master orders by load: the broker without tunnels first.
    let listed = master_list(&master, 0, 10 * SEC, |l| l.first().map(String::as_str) == Some(other));
    assert_eq!(listed.len(), 2, "{listed:?}");

    // alice reaching the wrong broker is sent to the one carrying her tunnel, and gets the same
    // address and prefix there.
    let probe_conf = |name: &str, user: &str, server: &str| {
        client_conf(
            &dir,
            name,
            &[
                format!("server={server}"),
                "auth_method=digest-md5".into(),
                format!("userid={user}"),
                format!("passwd={user}-password"),
                "host_type=router".into(),
                "prefixlen=56".into(),
                format!("if_prefix={lan0}"),
                "tunnel_mode=v6udpv4".into(),
                format!("gogoc_dir={}", dir.join(format!("{name}-home")).display()),
            ],
        )
    };
    let wrong = probe_conf("wrong.conf", "alice", other);
    std::fs::create_dir_all(dir.join("wrong.conf-home")).unwrap();
    let probe = c
        .run_timeout(TSPC, &["-f", wrong.to_str().unwrap(), "--dry-run"], 20 * SEC)
        .unwrap();
    let said = format!("{}{}", probe.stdout, probe.stderr);
    assert!(probe.success(), "dry run to {other}:\n{said}");
    assert!(
        said.contains("broker redirects"),
        "{other} did not redirect alice home:\n{said}"
    );
    assert_eq!(negotiated_with(&said).as_deref(), Some(home_broker), "{said}");
    assert_eq!(field(&said, "client:").as_deref(), Some(address.as_str()), "{said}");
    assert_eq!(field(&said, "prefix:").as_deref(), Some(prefix.as_str()), "{said}");
    let other_log = other_proc.output();
    assert!(
        other_log.contains("tunnel carried by another live broker; redirecting there"),
        "{other_log}"
    );

    // The home broker is killed: alice's client notices, goes back through the master and is
    // served by the other broker with the same address and prefix.
    let mark = alice.mark();
    let killed = Instant::now();
    let home_proc = if home_broker == "198.18.11.11" {
        &broker_a
    } else {
        &broker_b
    };
    home_proc.kill();
    alice
        .wait_for_output_since(mark, "(up)", 30 * SEC)
        .unwrap_or_else(|e| panic!("{e}:\n{}", output_since(&alice, mark)));
    let failover = killed.elapsed();
    let after = output_since(&alice, mark);
    assert_eq!(
        negotiated_with(&after).as_deref(),
        Some(other),
        "after the kill:\n{after}"
    );
    assert_eq!(field(&after, "client:").as_deref(), Some(address.as_str()), "{after}");
    assert_eq!(field(&after, "prefix:").as_deref(), Some(prefix.as_str()), "{after}");
    let ping = c.ping_until("2001:db8:b::1", 10 * SEC);
    assert!(ping.is_some(), "no ping through the tunnel to {other}");
    let listed = master_list(&master, 0, 10 * SEC, |l| l == [other.to_string()]);
    routes_via(other);
    if other == "198.18.11.11" {
        host_routes(&a, "tspa");
    } else {
        host_routes(&b, "tspb");
    }
    println!(
        "{home_broker} killed: alice up on {other} after {failover:?} (same address and prefix), \
         first ping {:?} later; the master lists {listed:?}",
        ping.unwrap()
    );
    // The killed broker comes back and rejoins.
    let restarted = start_member(home_host, home_conf);
    master_list(&master, 0, 10 * SEC, |l| l.len() == 2);

    // The database goes away: the tunnel keeps working, new logins are refused with 530 and
    // a reason, and everything serves again once the database is back.
    let carrier = if other == "198.18.11.11" { &broker_a } else { &broker_b };
    let (mark_alice, mark_carrier, mark_master) = (alice.mark(), carrier.mark(), master.mark());
    let db_down = Instant::now();
    pg.stop();
    carrier
        .wait_for_output_since(mark_carrier, "database unreachable", 10 * SEC)
        .unwrap_or_else(|e| panic!("{e}:\n{}", output_since(carrier, mark_carrier)));
    master
        .wait_for_output_since(mark_master, "database unreachable", 10 * SEC)
        .unwrap_or_else(|e| panic!("{e}:\n{}", output_since(&master, mark_master)));
    let noticed = db_down.elapsed();
    assert!(
        c.ping_until("2001:db8:b::1", 5 * SEC).is_some(),
        "the tunnel stopped with the database"
    );
    let bob = probe_conf("bob.conf", "bob", "192.0.2.10");
    std::fs::create_dir_all(dir.join("bob.conf-home")).unwrap();
    let refused = c
        .run_timeout(TSPC, &["-f", bob.to_str().unwrap(), "--dry-run"], 20 * SEC)
        .unwrap();
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(!refused.success(), "bob was served without a database:\n{said}");
    assert!(said.contains("530"), "not a clear try-later refusal:\n{said}");
    let direct = probe_conf("bob-direct.conf", "bob", other);
    std::fs::create_dir_all(dir.join("bob-direct.conf-home")).unwrap();
    let refused = c
        .run_timeout(TSPC, &["-f", direct.to_str().unwrap(), "--dry-run"], 20 * SEC)
        .unwrap();
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(!refused.success() && said.contains("530"), "{said}");
    let carrier_log = output_since(carrier, mark_carrier);
    assert!(carrier_log.contains("530"), "the refusal is not logged:\n{carrier_log}");
    // One refusal line per client, with its peer and the reason the metrics count it under.
    for (name, log) in [("carrier", carrier_log), ("master", output_since(&master, mark_master))] {
        let refusal = log
            .lines()
            .find(|l| l.contains("client refused") && l.contains("reason=\"database_unavailable\""));
        assert!(
            refusal.is_some_and(|l| l.contains("status=530") && l.contains("peer=203.0.113.2:")),
            "the {name}'s refusal is not logged with its reason:\n{log}"
        );
    }

    pg.ctl_start().unwrap();
    let db_up = Instant::now();
    carrier
        .wait_for_output_since(mark_carrier, "database reachable", 15 * SEC)
        .unwrap_or_else(|e| panic!("{e}:\n{}", output_since(carrier, mark_carrier)));
    master_list(&master, mark_master, 15 * SEC, |l| l.len() == 2);
    let recovered = db_up.elapsed();
    let served = c
        .run_timeout(TSPC, &["-f", bob.to_str().unwrap(), "--dry-run"], 20 * SEC)
        .unwrap();
    let said = format!("{}{}", served.stdout, served.stderr);
    assert!(served.success(), "bob not served after the database came back:\n{said}");
    assert!(field(&said, "prefix:").is_some_and(|p| p != prefix), "{said}");
    let alice_meanwhile = output_since(&alice, mark_alice);
    assert!(
        !alice_meanwhile.contains("stopped answering keepalives"),
        "alice's tunnel dropped during the database outage:\n{alice_meanwhile}"
    );
    assert!(c.ping_until("2001:db8:b::1", 5 * SEC).is_some());
    println!(
        "database stopped: refusals after {noticed:?}; started again: serving after {recovered:?}; \
         alice's tunnel never dropped; whole test {:?}",
        started.elapsed()
    );
    for (name, p) in [("master", &master), ("carrier", carrier), ("restarted", &restarted)] {
        assert!(p.status().is_none(), "{name} died:\n{}", p.output());
        let log = p.output();
        assert!(
            !log.contains("alice-password") && !log.contains("bob-password"),
            "a password in {name}'s log"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The last prefix

/// A loopback broker of the race test; its UDP port.
/// A broker process outside the lab's namespaces, killed when dropped: a failed assertion does
/// not leave it running (and answering) behind the test.
struct Loose(std::process::Child);

impl Drop for Loose {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_loopback(conf: &Path) -> (Loose, PathBuf, u16) {
    let log = conf.with_extension("log");
    let child = Command::new(BROKER)
        .args(["-v", "-c", conf.to_str().unwrap()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .map(Loose)
        .unwrap();
    let port = wait_for(10 * SEC, || {
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.starts_with("tsp-broker listening"))?;
        line.split("udp [127.0.0.1:").nth(1)?.split(']').next()?.parse().ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "broker did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (child, log, port)
}

#[test]
fn two_brokers_race_for_the_last_prefix() {
    let Some(pg) = Postgres::start("race") else { return };
    let dir = pg.dir.join("brokers");
    std::fs::create_dir_all(&dir).unwrap();
    // One /56 in the whole prefix pool.
    let toml = |id: &str| {
        format!(
            "listen = [\"127.0.0.1:0\"]\nauth = [\"digest-md5\"]\nrealm = \"fleet\"\ntunnel_modes = [\"v6udpv4\"]\n\
             database = \"{}\"\nfleet_id = \"{id}\"\ndatapath = false\n\
             prefix_pool = \"2001:db8:c000::/56\"\nprefix_length_min = 56\nprefix_length_max = 56\n",
            pg.conninfo()
        )
    };
    let conf = [dir.join("r1.toml"), dir.join("r2.toml")];
    std::fs::write(&conf[0], toml("r1")).unwrap();
    std::fs::write(&conf[1], toml("r2")).unwrap();
    db_cmd(&conf[0], &["add-user", "carol"], "carol-password\n");
    db_cmd(&conf[0], &["add-user", "dave"], "dave-password\n");
    let mut brokers: Vec<_> = conf.iter().map(|c| start_loopback(c)).collect();

    // carol asks r1 and dave asks r2, at the same moment.
    let probes: Vec<_> = [("carol", brokers[0].2), ("dave", brokers[1].2)]
        .iter()
        .map(|(user, port)| {
            let home = dir.join(format!("{user}-home"));
            std::fs::create_dir_all(&home).unwrap();
            let conf = client_conf(
                &dir,
                &format!("{user}.conf"),
                &[
                    format!("server=127.0.0.1:{port}"),
                    "auth_method=digest-md5".into(),
                    format!("userid={user}"),
                    format!("passwd={user}-password"),
                    "host_type=router".into(),
                    "prefixlen=56".into(),
                    "if_prefix=lo".into(),
                    "tunnel_mode=v6udpv4".into(),
                    format!("gogoc_dir={}", home.display()),
                ],
            );
            Command::new(TSPC)
                .args(["-f", conf.to_str().unwrap(), "--dry-run"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<String> = probes
        .into_iter()
        .map(|p| {
            let out = p.wait_with_output().unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .collect();
    let winners: Vec<_> = results.iter().filter_map(|r| field(r, "prefix:")).collect();
    assert_eq!(
        winners,
        ["2001:db8:c000::/56"],
        "exactly one router gets the prefix:\n{results:#?}"
    );
    let loser = results.iter().find(|r| field(r, "prefix:").is_none()).unwrap();
    assert!(loser.contains("507"), "the other is told no prefix is left:\n{loser}");
    // The first two stop (SIGTERM: they leave the fleet at once, so the tunnels they carried
    // are nobody's), and the winner asks a third broker, over TCP (its UDP is off) and for
    // v6v4: the same prefix, the database's.
    for b in &mut brokers {
        let pid = nix::unistd::Pid::from_raw(b.0.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = b.0.0.wait().unwrap();
        assert!(status.success(), "broker exit {status}");
    }
    let winner = if field(&results[0], "prefix:").is_some() {
        "carol"
    } else {
        "dave"
    };
    let conf3 = dir.join("r3.toml");
    std::fs::write(
        &conf3,
        toml("r3").replace("tunnel_modes = [\"v6udpv4\"]", "tunnel_modes = [\"v6v4\"]\nudp = false"),
    )
    .unwrap();
    let log3 = conf3.with_extension("log");
    let r3 = Command::new(BROKER)
        .args(["-v", "-c", conf3.to_str().unwrap()])
        .stdout(std::fs::File::create(&log3).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(Loose)
        .unwrap();
    let port3: u16 = wait_for(10 * SEC, || {
        let text = std::fs::read_to_string(&log3).ok()?;
        let line = text.lines().find(|l| l.starts_with("tsp-broker listening"))?;
        line.split("tcp [127.0.0.1:").nth(1)?.split(']').next()?.parse().ok()
    })
    .expect("third broker listening");
    let conf = client_conf(
        &dir,
        "again.conf",
        &[
            format!("server=127.0.0.1:{port3}"),
            "auth_method=digest-md5".into(),
            format!("userid={winner}"),
            format!("passwd={winner}-password"),
            "host_type=router".into(),
            "prefixlen=56".into(),
            "if_prefix=lo".into(),
            "tunnel_mode=v6v4".into(),
            format!("gogoc_dir={}", dir.display()),
        ],
    );
    let again = Command::new(TSPC)
        .args(["-f", conf.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(said.contains("over Tcp"), "{said}");
    assert_eq!(field(&said, "prefix:").as_deref(), Some("2001:db8:c000::/56"), "{said}");
    // A disabled account cannot log in (its prefix stays assigned); enabled again, it can.
    let run = || {
        let out = Command::new(TSPC)
            .args(["-f", conf.to_str().unwrap(), "--dry-run"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    db_cmd(&conf3, &["disable-user", winner], "");
    let (ok, said) = run();
    assert!(!ok && said.to_lowercase().contains("authentication failed"), "{said}");
    let users = db_cmd(&conf3, &["list-users"], "");
    let line = users
        .lines()
        .find(|l| l.starts_with(&format!("{winner}\t")))
        .unwrap_or_default();
    assert!(
        line.contains("\tdisabled\t") && line.contains("prefix6 2001:db8:c000::/56"),
        "{users}"
    );
    db_cmd(&conf3, &["enable-user", winner], "");
    let (ok, said) = run();
    assert!(ok && said.contains("2001:db8:c000::/56"), "{said}");
    drop(r3);

    // The same guarantee under heavy contention: two brokers' connection pools allocating for
    // 24 keys at once from a pool of 16 prefixes.
    let cfg = std::sync::Arc::new(
        tsp_broker::config::BrokerConfig::parse(
            &format!(
                "database = \"{}\"\nfleet_id = \"x\"\nfleet_address = \"x\"\n\
                 prefix_pool = \"2001:db8:d000::/60\"\nprefix_length_min = 64\nprefix_length_max = 64\n",
                pg.conninfo()
            ),
            Path::new("race.toml"),
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let assigned = rt.block_on(async {
        let fleet = cfg.fleet.clone().unwrap();
        let pools = [
            tsp_broker::db::Db::new(&fleet).unwrap(),
            tsp_broker::db::Db::new(&fleet).unwrap(),
        ];
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let (db, cfg) = (pools[i % 2].clone(), cfg.clone());
                tokio::spawn(async move {
                    db.assign(&cfg, &format!("user:r{i}"), tsp_broker::PoolKind::Prefix6, 64)
                        .await
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap().expect("no database error"));
        }
        got
    });
    let mut blocks: Vec<u128> = assigned.iter().flatten().copied().collect();
    assert_eq!(blocks.len(), 16, "every prefix handed out, no more: {assigned:?}");
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), 16, "a prefix handed out twice: {assigned:?}");
    // And the guarantee is the schema's, whoever writes: an overlapping block is refused.
    let sql = "INSERT INTO assignments (key, pool, block) VALUES ('user:intruder', 'prefix6', '2001:db8:d000::/62')";
    let host = pg.dir.display().to_string();
    let out = pg
        .cmd("psql")
        .args([
            "-h",
            &host,
            "-U",
            "tsp",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exclusion constraint"), "{err}");
    println!("last prefix: one winner end to end; 24 racing allocations got 16 distinct prefixes");
}
