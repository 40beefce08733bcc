#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: installs what it needs, builds,
# runs every test. Run as root (namespace tests need it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

need_pkgs=(iproute2 nftables iputils-ping ndisc6 procps dbus)
missing=()
for p in "${need_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== cargo fetch"
cargo fetch --locked
echo "== build"
cargo build --locked --all-targets
echo "== tests"
cargo test --locked --all-targets
echo "== demo (namespaces: broker, direct client, client behind NAT)"
bash tests/demo.sh
echo "== fuzz smoke (every cargo-fuzz target, briefly)"
FUZZ_SECONDS="${FUZZ_SECONDS:-5}" bash tests/fuzz-smoke.sh
