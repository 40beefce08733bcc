#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: installs what it needs, builds,
# runs every test. Run as root (namespace tests need it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# libnm-dev, libglib2.0-dev, pkg-config: the libnm editor plugin (nm-plugin/libnm-plugin) links
# libnm and GLib. dbus + network-manager: the NetworkManager end-to-end tests and the D-Bus contract test;
# gnome-keyring, libsecret-tools (secret-tool), systemd (busctl): tests/auth_dialog.rs runs
# nm-tsp-auth-dialog against a real headless keyring.
# pkg-config, libgtk-3-dev, libgtk-4-dev: the GTK3/GTK4 editor plugins (nm-plugin/editor-gtk3,
# editor-gtk4); xvfb, xauth, fonts-dejavu-core: their tests show the editors in real windows on
# a private X server; network-manager-gnome: nm-connection-editor, the GTK3 editor's host
# (tests/nm_connection_editor.rs); imagemagick: its screenshot (import); lintian: the Debian
# packages' check (data/debian/build.sh); debootstrap: the system tier's Debian 12 root
# (tests/system_tier.rs, harness tests/uml/system.rs; built once, cached under target/uml/);
# postgresql: tests/fleet.rs runs a private PostgreSQL server (initdb/pg_ctl) for the broker fleet.
need_pkgs=(iproute2 nftables iputils-ping ndisc6 procps dbus network-manager gnome-keyring libsecret-tools systemd util-linux
  libnm-dev libglib2.0-dev pkg-config libgtk-3-dev libgtk-4-dev xvfb xauth fonts-dejavu-core network-manager-gnome imagemagick
  lintian debootstrap postgresql)
missing=()
for p in "${need_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The kernel tier (tests/kernel_tier.rs, harness tests/uml) fetches Debian's user-mode-linux and
# kmod with `apt-get download` (dpkg-deb and perl, essential packages, do the rest); it needs
# apt's package lists, which minimal images ship without.
if ! apt-cache policy user-mode-linux 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  echo "== apt-get update (for the kernel tier's user-mode-linux)"
  apt-get update -qq
fi

echo "== cargo fetch"
cargo fetch --locked
# The house rules the compiler alone does not hold: one format, and clippy clean with the
# workspace lints (every `unsafe` block explains itself: clippy::undocumented_unsafe_blocks).
for tool in rustfmt clippy; do
  cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$tool"
done
echo "== format"
cargo fmt --all --check
echo "== clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== build"
cargo build --locked --all-targets
# The Debian packages, made from this build (PROFILE=dev: no second, release build in CI) and
# checked by lintian; tests/debian_packages.rs reads them back and must find them.
echo "== debian packages"
PROFILE=dev bash data/debian/build.sh
echo "== tests"
NM_TSP_REQUIRE_PACKAGES=1 cargo test --locked --all-targets
echo "== demo (broker in a namespace, NetworkManager on a private bus, nmcli connection up)"
bash tests/demo.sh
echo "== fuzz smoke (every cargo-fuzz target, briefly)"
FUZZ_SECONDS="${FUZZ_SECONDS:-5}" bash tests/fuzz-smoke.sh
