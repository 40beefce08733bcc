#!/usr/bin/env bash
# Builds the four Debian packages into target/debian/ (release binaries, cargo-deb):
#   network-manager-tsp        nm-tsp-service, nm-tsp-auth-dialog, the .name file, the D-Bus
#                              policy, the libnm plugin (gogoc.conf import/export), man pages
#   network-manager-tsp-gnome  the GTK3 and GTK4 connection editors
#   tspc                       the standalone client, its systemd unit, the sample gogoc.conf
#   tsp-broker                 the broker, its hardened systemd unit, its configuration
# and checks them with lintian when it is installed. Installs cargo-deb if it is missing.
#
#   bash data/debian/build.sh             build, package, lint
#   PROFILE=dev bash data/debian/build.sh package what `cargo build` made (for tests: fast,
#                                         not for users)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}

if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --version 3.8.0 --locked
fi
if [ "$profile" = release ]; then
  echo "== cargo build --release (every program and library the packages hold)"
  cargo build --release --locked --workspace --bins --lib
fi
out="$target/debian"
mkdir -p "$out"
rm -f "$out"/*.deb
for variant in "" gnome tspc broker; do
  args=(--no-build --locked -p nm-tsp --output "$out/")
  [ -n "$variant" ] && args+=(--variant "$variant")
  [ "$profile" = release ] || args+=(--profile "$profile")
  cargo deb "${args[@]}" >/dev/null
done
ls -1 "$out"/*.deb
if command -v lintian >/dev/null 2>&1; then
  echo "== lintian"
  # Warnings fail too; the tags accepted, each with its reason, are in lintian-suppressed.
  lintian --fail-on error,warning --suppress-tags-from-file data/debian/lintian-suppressed "$out"/*.deb
fi
