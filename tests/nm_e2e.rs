//! NetworkManager end to end: a real NetworkManager (private bus, own mount namespace) in a
//! client namespace spawns the built `nm-tsp-service`, which negotiates with the bundled
//! `tsp-broker` in another namespace; assertions are on what NetworkManager and the kernel
//! show (VPN state, addresses, routes, pings, processes). Root only; skips otherwise.

mod netns;
mod testbed;

use std::time::Duration;

use netns::{Host, Lab, Proc, Signal, require_root};
use testbed::{Nm, require_nm, wait_until};

const SEC: Duration = Duration::from_secs(1);
const BROKER: &str = env!("CARGO_BIN_EXE_tsp-broker");
const BROKER_V6: &str = "2001:db8:b::1";
const BROKER_V4_INNER: &str = "198.51.100.1";
const PASSWORD: &str = "s3cret-Pa55";

fn start_broker(lab: &Lab, b: &Host, name: &str, extra: &str) -> Proc {
    let accounts = lab.file(&format!("{name}.accounts"), "").unwrap();
    let toml = format!(
        "listen = [\"[::]:3653\"]\nauth = [\"anonymous\", \"digest-md5\"]\nrealm = \"test\"\n\
         accounts_file = \"{}\"\nserver_ipv6 = \"{BROKER_V6}\"\nclient_pool = \"2001:db8:b::/64\"\n\
         keepalive_min = 1\nstate_file = \"{}\"\n{extra}",
        accounts.display(),
        lab.dir().join(format!("{name}.state")).display()
    );
    let conf = lab.file(&format!("{name}.toml"), &toml).unwrap();
    let conf = conf.to_str().unwrap();
    let add = std::process::Command::new(BROKER)
        .args(["-c", conf, "add-user", "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(add.success());
    let p = b.spawn(BROKER, &["-c", conf]).unwrap();
    p.wait_for_output("listening", 10 * SEC).unwrap();
    p
}

/// NetworkManager in `c` with a base connection on `c_if`; broker host `b` on the same link.
struct Bed {
    lab: Lab,
    c: Host,
    b: Host,
    c_if: String,
    nm: Nm,
}

fn direct(test: &str) -> Bed {
    let lab = Lab::new(test).unwrap();
    let (c, b) = (lab.host("c").unwrap(), lab.host("b").unwrap());
    let (c_if, _) = lab
        .link(&c, &[], &b, &["192.0.2.1/24", "2001:db8:1::1/64"])
        .unwrap();
    let nm = Nm::start(&lab, &c).unwrap();
    nm.base_connection(&c_if, Some("192.0.2.2/24"), None, Some("2001:db8:1::2/64"))
        .unwrap();
    Bed { lab, c, b, c_if, nm }
}

/// The tunnel device of VPN `id`: `tsp-` and the first 8 hex digits of its UUID (one name per
/// profile, so a device left by a killed service is found again).
fn tundev(nm: &Nm, id: &str) -> String {
    let uuid = nm.con_field(id, "connection.uuid");
    format!("tsp-{}", uuid.chars().filter(char::is_ascii_hexdigit).take(8).collect::<String>())
}

fn up_and_connected(bed: &Bed, id: &str) -> String {
    let out = bed.nm.up(id, &bed.c_if);
    bed.nm
        .wait_vpn_state(id, 5, 20 * SEC)
        .unwrap_or_else(|e| panic!("{e}\nnmcli: {} {}", out.stdout, out.stderr));
    tundev(&bed.nm, id)
}

fn down_and_gone(bed: &Bed, id: &str, dev: &str) {
    bed.nm.nmcli(&["connection", "down", id]).unwrap();
    assert!(
        wait_until(10 * SEC, || !bed.c.link_exists(dev)).is_ok(),
        "{dev} still exists after `con down`"
    );
    assert!(
        wait_until(10 * SEC, || bed.nm.plugin_pids().is_empty()).is_ok(),
        "nm-tsp-service still runs after `con down`: {:?}",
        bed.nm.plugin_pids()
    );
}

#[test]
fn up_pings_and_down_cleanly_v6v4() {
    if !require_root() || !require_nm() {
        return;
    }
    let bed = direct("nm_up_down_v6v4");
    let _broker = start_broker(&bed.lab, &bed.b, "broker", "");
    bed.nm
        .add_vpn("tsp1", "server=192.0.2.1, tunnel-mode=v6anyv4", None, &[])
        .unwrap();
    let dev = up_and_connected(&bed, "tsp1");
    assert!(dev.starts_with("tsp-"), "tunnel device {dev:?}");
    // The address the broker assigned, from NetworkManager's point of view and the kernel's.
    let ip6 = bed.nm.con_field("tsp1", "IP6.ADDRESS");
    assert!(ip6.contains("2001:db8:b::"), "IP6.ADDRESS {ip6:?}");
    let addrs = bed.c.addrs(&dev).unwrap();
    assert!(addrs.iter().any(|a| a.starts_with("2001:db8:b::")), "{dev}: {addrs:?}");
    let banner = bed.nm.con_field("tsp1", "VPN.BANNER");
    assert!(banner.contains("TSP v6v4 tunnel with 192.0.2.1"), "banner {banner:?}");
    let routes = bed.c.routes_v6().unwrap();
    assert!(
        routes.iter().any(|r| r.starts_with("default") && r.contains(&format!("dev {dev}"))),
        "no default route through {dev}: {routes:?}"
    );
    assert!(bed.c.ping(BROKER_V6, 3, 2), "no IPv6 ping through the tunnel");
    down_and_gone(&bed, "tsp1", &dev);
    let routes = bed.c.routes_v6().unwrap();
    assert!(!routes.iter().any(|r| r.contains(&dev)), "routes left: {routes:?}");
}
