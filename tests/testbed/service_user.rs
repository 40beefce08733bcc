//! The system user nm-tsp-service becomes (`tsp_config::names::SERVICE_USER`), made on the test
//! host as the package's postinst makes it, so the tests run the service as users get it: it
//! switches to that user before it connects to the bus, with the shipped D-Bus policy.

use std::process::Command;

/// The user's uid, after making it when it does not exist yet.
pub fn ensure() -> Result<u32, String> {
    let user = tsp_config::names::SERVICE_USER;
    if let Some(uid) = uid(user) {
        return Ok(uid);
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
        ])
        .args(["--shell", "/usr/sbin/nologin", user])
        .output()
        .map_err(|e| format!("useradd: {e}"))?;
    // Another test may have made it meanwhile: the lookup decides.
    uid(user).ok_or_else(|| format!("useradd {user}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn uid(user: &str) -> Option<u32> {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}
