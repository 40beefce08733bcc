//! The `tspc` program itself: gogoc.conf in, a negotiated tunnel (or a precise error) out.

mod common;

use std::process::Command;

use common::*;

fn tspc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tspc"))
        .args(args)
        .output()
        .expect("run tspc");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dry_run_prints_the_offer() {
    let dir = scratch_dir("tspc-dry-run");
    let broker = start_broker(
        &broker_toml(&dir, "127.0.0.1:0", "dns_suffix = \"broker.example.net\""),
        None,
    )
    .await;
    let conf = dir.join("gogoc.conf");
    std::fs::write(
        &conf,
        format!(
            "# a gogoc.conf\nserver={}\nauth_method=digest-md5\nuserid=user1\npasswd=pass1\ntunnel_mode=v6udpv4\nhost_type=router\nif_prefix=eth1\nprefixlen=56\nkeepalive_interval=20\n",
            broker.server()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || tspc(&["-f", &conf_s, "--dry-run"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("over Udp, TSP 2.0.2, DIGEST-MD5"), "{out}");
    assert!(out.contains("mode:        v6udpv4"), "{out}");
    assert!(out.contains("/56"), "{out}");
    assert!(out.contains("keepalive:   every 20 s"), "{out}");
    assert!(out.contains("dns name:    user1.broker.example.net"), "{out}");
    assert!(!out.contains("pass1") && !err.contains("pass1"), "password printed");
    // The broker holds the same tunnel.
    assert!(eventually(|| broker.running.shared.lock().sessions().any(|s| s.established)).await);
}

#[tokio::test]
async fn errors_are_precise() {
    let dir = scratch_dir("tspc-errors");
    let conf = dir.join("bad.conf");
    std::fs::write(&conf, "server=192.0.2.1\nretry_delay=9000\n").unwrap();
    let (code, _, err) = tspc(&["-f", &conf.display().to_string(), "--dry-run"]);
    assert_ne!(code, 0);
    assert!(err.contains("bad.conf:2") && err.contains("retry_delay"), "{err}");

    let (code, _, err) = tspc(&["-f", &dir.join("missing.conf").display().to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.conf"), "{err}");

    // A wrong password: an authentication error, not a crash, and no password in the output.
    let broker = start_broker(&broker_toml(&dir, "127.0.0.1:0", ""), None).await;
    std::fs::write(
        &conf,
        format!(
            "server={}\nauth_method=digest-md5\nuserid=user1\npasswd=Wr0ngPa55\n",
            broker.server()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || tspc(&["-f", &conf_s, "--dry-run"]))
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("Wr0ngPa55") && !out.contains("Wr0ngPa55"));

    // -s must be an IPv4 address.
    let (code, _, err) = tspc(&["-f", &conf.display().to_string(), "-s", "nonsense", "--dry-run"]);
    assert_ne!(code, 0);
    assert!(err.contains("-s nonsense"), "{err}");
}

#[test]
fn help_lists_gogoc_options() {
    let (code, out, _) = tspc(&["-h"]);
    assert_eq!(code, 0);
    for opt in ["-f", "-b", "-n", "-y", "-i", "-u", "-s", "-v", "--dry-run"] {
        assert!(out.contains(opt), "{opt} missing from --help:\n{out}");
    }
}
