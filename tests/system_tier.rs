//! The system tier: the Debian packages in a real Debian 12 — systemd, the system bus and
//! NetworkManager as a service — booted under user-mode Linux by tests/uml/system.rs
//! (docs/testbed.md §8). One boot runs tests/data/system_tier.sh as a systemd unit after
//! NetworkManager: `apt-get install` of network-manager-tsp, tspc and tsp-broker from
//! target/debian/; the broker from its packaged unit (a drop-in puts it in a network namespace on
//! the far side of a veth pair); an NM-managed base connection and `nmcli connection up` of a
//! v6v4 tsp VPN (NetworkManager spawns nm-tsp-service, a kernel sit link, ping -6 through it);
//! the broker's unit operated under it (Type=notify status and watchdog, `systemctl reload`
//! keeping the tunnel, `tsp-broker sessions` / `disconnect` and the VPN coming back by itself);
//! `nmcli connection down` (nothing left); the service's user and capabilities; tspc from its
//! packaged unit (a TUN tunnel, its capabilities, a clean stop); the VPN as the base connection's
//! secondary, by hand and after a reboot (the guest powers off and is booted again from the same
//! disk: the overlay's upper layer is an ext4 image); `apt-get purge` (no file left).
//!
//! Root only. Prints a skip line and passes when the kernel or the root cannot be had (see
//! tests/uml), or when the packages were not built (`PROFILE=dev bash data/debian/build.sh`;
//! a failure instead under NM_TSP_REQUIRE_PACKAGES=1, as tests/run.sh sets).

mod netns;
mod uml;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

/// A cold cache's debootstrap is not counted: two boots of systemd and NetworkManager, apt, the
/// connections; ≈ 4 min warm on a loaded 2-core machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);
const SCENARIO: &str = include_str!("data/system_tier.sh");
const PACKAGES: [&str; 3] = ["network-manager-tsp", "tspc", "tsp-broker"];
/// The lines the scenario prints for its steps, in order: the first boot's, then the second's.
const FIRST_BOOT: [&str; 13] = [
    "system-tier: ok: NetworkManager is running",
    "system-tier: ok: installed with apt-get",
    "system-tier: ok: tsp-broker.service active",
    "system-tier: ok: base connection up",
    "system-tier: ok: NetworkManager spawned /usr/libexec/nm-tsp-service",
    "system-tier: ok: nm-tsp-service runs as nm-tsp",
    "system-tier: ok: kernel sit link",
    "system-tier: ok: broker unit:",
    "system-tier: ok: down:",
    "system-tier: ok: tspc.service: tunnel tun up",
    "system-tier: ok: tspc.service stopped",
    "system-tier: ok: secondary:",
    "system-tier: ok: powering off for the reboot",
];
const SECOND_BOOT: [&str; 3] = [
    "system-tier: ok: booted again:",
    "system-tier: ok: after the reboot:",
    "system-tier: ok: purged:",
];

fn debs() -> Result<Vec<PathBuf>, String> {
    let dir = uml::target_dir().join("debian");
    PACKAGES
        .iter()
        .map(|p| {
            let deb = dir.join(format!("{p}_0.1.0-1_amd64.deb"));
            if deb.is_file() {
                Ok(deb)
            } else {
                Err(format!(
                    "{} is missing (PROFILE=dev bash data/debian/build.sh)",
                    deb.display()
                ))
            }
        })
        .collect()
}

#[test]
fn packages_install_connect_reboot_purge_under_systemd() {
    if !netns::require_root() {
        return;
    }
    let debs = match debs() {
        Ok(d) => d,
        Err(why) if std::env::var_os("NM_TSP_REQUIRE_PACKAGES").is_some() => panic!("{why}"),
        Err(why) => {
            println!("skipped: system tier: {why}");
            return;
        }
    };
    let system = match uml::system::prepare() {
        Ok(s) => s,
        Err(uml::Skip(why)) => {
            println!("skipped: system tier: {why}");
            return;
        }
    };
    let run = system.run_dir("system_tier");
    fs::create_dir(run.join("debs")).unwrap();
    for deb in &debs {
        fs::copy(deb, run.join("debs").join(deb.file_name().unwrap())).unwrap();
    }
    for (boot_no, steps) in [(1, &FIRST_BOOT[..]), (2, &SECOND_BOOT[..])] {
        let boot = system.run(&run, SCENARIO, true, GUEST_TIMEOUT).unwrap();
        println!(
            "system tier: boot {boot_no} and its scenario took {:.1?}\n{}",
            boot.elapsed, boot.console
        );
        let mut from = 0;
        for step in steps {
            match boot.console[from..].find(step) {
                Some(at) => from += at + step.len(),
                None => panic!("the guest did not print {step:?} in boot {boot_no} (in order); its console is above"),
            }
        }
        assert!(
            boot.success(),
            "the scenario failed in boot {boot_no} (guest status {:?}, linux.uml exit {:?}, timed out: {}); its console is above",
            boot.guest_status,
            boot.exit,
            boot.timed_out,
        );
    }
}
