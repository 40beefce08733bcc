#!/usr/bin/env bash
# Installs (or, with --uninstall, removes) NetworkManager-tsp: the NetworkManager plugin
# (nm-tsp-service + its .name file and D-Bus policy), the auth dialog, tspc and tsp-broker with
# their man pages, systemd units and sample configurations.
#
#   data/install.sh                      build release binaries, install under /usr (as root)
#   BIN=target/release data/install.sh   install binaries built before (e.g. as your user)
#   DESTDIR=/tmp/stage data/install.sh   stage for a package (no root needed)
#   data/install.sh --uninstall          remove exactly the files an install with the same
#                                        PREFIX/DESTDIR/... settings puts in place
#
# Settings (environment):
#   PREFIX=/usr                 DESTDIR=              (prepended to every path, as in make)
#   LIBEXECDIR=$PREFIX/libexec  nm-tsp-service, nm-tsp-auth-dialog (the .name file is rewritten)
#   SBINDIR=$PREFIX/sbin        tspc, tsp-broker: they configure the system and need root or
#                               CAP_NET_ADMIN, like the units' ExecStart (rewritten to match)
#   NMPLUGINDIR=<libnm plugindir>              libnm-vpn-plugin-tsp.so (nmcli import/export);
#                               default: pkg-config --variable=plugindir libnm with /usr
#                               replaced by PREFIX, else $PREFIX/lib/NetworkManager (the .name
#                               file's [libnm] plugin= is rewritten)
#   NMVPNDIR=$PREFIX/lib/NetworkManager/VPN      NetworkManager reads /usr/lib/NetworkManager/VPN
#                                                and /etc/NetworkManager/VPN only
#   DBUSPOLICYDIR=$PREFIX/share/dbus-1/system.d  dbus reads /usr/share/dbus-1/system.d and
#                                                /etc/dbus-1/system.d only
#   MANDIR=$PREFIX/share/man    DOCDIR=$PREFIX/share/doc/nm-tsp (samples in DOCDIR/examples)
#   SYSTEMDUNITDIR=$PREFIX/lib/systemd/system
#   BIN=                        directory with the built binaries and libnm_vpn_plugin_tsp.so;
#                               unset: `cargo build --release --locked --workspace --bins --lib`
#                               and use ${CARGO_TARGET_DIR:-target}/release
set -euo pipefail
umask 022

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PREFIX=${PREFIX:-/usr}
DESTDIR=${DESTDIR:-}
LIBEXECDIR=${LIBEXECDIR:-$PREFIX/libexec}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
if [ -z "${NMPLUGINDIR:-}" ]; then
  NMPLUGINDIR=$(pkg-config --variable=plugindir libnm 2>/dev/null || true)
  case "$NMPLUGINDIR" in
    /usr/*) NMPLUGINDIR=$PREFIX${NMPLUGINDIR#/usr} ;;
    *) NMPLUGINDIR=$PREFIX/lib/NetworkManager ;;
  esac
fi
NMVPNDIR=${NMVPNDIR:-$PREFIX/lib/NetworkManager/VPN}
DBUSPOLICYDIR=${DBUSPOLICYDIR:-$PREFIX/share/dbus-1/system.d}
MANDIR=${MANDIR:-$PREFIX/share/man}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/nm-tsp}
SYSTEMDUNITDIR=${SYSTEMDUNITDIR:-$PREFIX/lib/systemd/system}

die() { echo "install.sh: $*" >&2; exit 1; }

mode=install
case "${1:-}" in
  "" | --install) ;;
  --uninstall) mode=uninstall ;;
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --install, --uninstall or --help)" ;;
esac
[ $# -le 1 ] || die "one argument at most"

# The paths go into sed expressions and the .name file: keep them plain.
for v in PREFIX LIBEXECDIR SBINDIR NMPLUGINDIR NMVPNDIR DBUSPOLICYDIR MANDIR DOCDIR SYSTEMDUNITDIR; do
  case "${!v}" in
    /*) ;;
    *) die "$v must be an absolute path, not '${!v}'" ;;
  esac
  [[ "${!v}" =~ ^[A-Za-z0-9/._+-]+$ ]] || die "$v='${!v}': only letters, digits and / . _ + - please"
done

# Every file this script installs: "mode destination source" (source relative to the tree;
# @BIN@/x = a built binary). The uninstall removes exactly these destinations.
files=(
  "0755 $LIBEXECDIR/nm-tsp-service @BIN@/nm-tsp-service"
  "0755 $LIBEXECDIR/nm-tsp-auth-dialog @BIN@/nm-tsp-auth-dialog"
  "0755 $SBINDIR/tspc @BIN@/tspc"
  "0755 $SBINDIR/tsp-broker @BIN@/tsp-broker"
  "0644 $NMPLUGINDIR/libnm-vpn-plugin-tsp.so @BIN@/libnm_vpn_plugin_tsp.so"
  "0644 $NMPLUGINDIR/libnm-vpn-plugin-tsp-editor.so @BIN@/libnm_vpn_plugin_tsp_editor.so"
  "0644 $NMPLUGINDIR/libnm-gtk4-vpn-plugin-tsp-editor.so @BIN@/libnm_gtk4_vpn_plugin_tsp_editor.so"
  "0644 $MANDIR/man8/nm-tsp-service.8 data/man/nm-tsp-service.8"
  "0644 $NMVPNDIR/nm-tsp-service.name nm-plugin/nm-tsp-service.name"
  "0644 $DBUSPOLICYDIR/nm-tsp-service.conf dbus/nm-tsp-service.conf"
  "0644 $MANDIR/man8/tspc.8 data/man/tspc.8"
  "0644 $MANDIR/man8/tsp-broker.8 data/man/tsp-broker.8"
  "0644 $MANDIR/man1/nm-tsp-auth-dialog.1 data/man/nm-tsp-auth-dialog.1"
  "0644 $SYSTEMDUNITDIR/tspc.service data/systemd/tspc.service"
  "0644 $SYSTEMDUNITDIR/tsp-broker.service data/systemd/tsp-broker.service"
  "0644 $DOCDIR/examples/gogoc.conf data/gogoc.conf"
  "0644 $DOCDIR/examples/tsp-broker.toml data/tsp-broker.toml"
)

if [ "$mode" = uninstall ]; then
  for f in "${files[@]}"; do
    read -r _ dest _ <<<"$f"
    if [ -e "$DESTDIR$dest" ] || [ -L "$DESTDIR$dest" ]; then
      rm -f -- "$DESTDIR$dest"
      echo "removed $DESTDIR$dest"
    fi
  done
  # Only the directories that are ours alone, and only when empty.
  rmdir --ignore-fail-on-non-empty -- "$DESTDIR$DOCDIR/examples" "$DESTDIR$DOCDIR" 2>/dev/null || true
  if [ -z "$DESTDIR" ]; then
    echo "Now reload the system bus's configuration:"
    echo "  busctl call org.freedesktop.DBus / org.freedesktop.DBus ReloadConfig"
  fi
  exit 0
fi

# Ownership: root:root when we can; otherwise only a DESTDIR staging install makes sense.
own=()
if [ "$(id -u)" = 0 ]; then
  own=(-o root -g root)
elif [ -z "$DESTDIR" ]; then
  die "installing to / needs root (or set DESTDIR to stage the files)"
fi

if [ -z "${BIN:-}" ]; then
  command -v cargo >/dev/null || die "cargo not found: build first (cargo build --release --locked --workspace --bins --lib) and pass BIN=target/release"
  echo "== cargo build --release --locked --workspace --bins --lib"
  (cd "$src" && cargo build --release --locked --workspace --bins --lib)
  target=${CARGO_TARGET_DIR:-target}
  case "$target" in /*) ;; *) target=$src/$target ;; esac
  BIN=$target/release
fi
[ -d "$BIN" ] || die "BIN=$BIN is not a directory"
for b in nm-tsp-service nm-tsp-auth-dialog tspc tsp-broker; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: build it first (cargo build --release --locked --bins)"
done
[ -f "$BIN/libnm_vpn_plugin_tsp.so" ] ||
  die "$BIN/libnm_vpn_plugin_tsp.so is missing: build it first (cargo build --release --locked --workspace --lib)"

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# The .name file names the programs NetworkManager and the agents run: point it at LIBEXECDIR.
sed -e "s#^program=.*#program=$LIBEXECDIR/nm-tsp-service#" \
    -e "s#^auth-dialog=.*#auth-dialog=$LIBEXECDIR/nm-tsp-auth-dialog#" \
    -e "s#^plugin=.*#plugin=$NMPLUGINDIR/libnm-vpn-plugin-tsp.so#" \
    "$src/nm-plugin/nm-tsp-service.name" >"$tmp/nm-tsp-service.name"
# The units start the programs from SBINDIR.
for u in tspc tsp-broker; do
  sed -e "/^ExecStart=/s#/usr/sbin/#$SBINDIR/#" "$src/data/systemd/$u.service" >"$tmp/$u.service"
done

gui_missing=
for f in "${files[@]}"; do
  read -r perm dest from <<<"$f"
  case "$from" in
    @BIN@/*) from=$BIN/${from#@BIN@/} ;;
    nm-plugin/nm-tsp-service.name) from=$tmp/nm-tsp-service.name ;;
    data/systemd/*) from=$tmp/$(basename "$from") ;;
    *) from=$src/$from ;;
  esac
  # The GTK editors are optional: without them the base plugin reports "no editor" and
  # nmcli import/export still work.
  case "$from" in
    */libnm_vpn_plugin_tsp_editor.so | */libnm_gtk4_vpn_plugin_tsp_editor.so)
      if [ ! -f "$from" ]; then
        gui_missing=1
        echo "skipped $DESTDIR$dest: $from is not built"
        continue
      fi ;;
  esac
  install -D -m "$perm" "${own[@]}" -- "$from" "$DESTDIR$dest"
  echo "installed $DESTDIR$dest"
done

[ -z "$gui_missing" ] || echo "NOTE: without the GTK editor libraries, nm-connection-editor and GNOME Settings" \
  "cannot edit tsp connections (nmcli can; build them with cargo build --release --workspace --lib)."
case "$NMVPNDIR" in
  /usr/lib/NetworkManager/VPN | /etc/NetworkManager/VPN) ;;
  *) echo "NOTE: NetworkManager reads .name files only from /usr/lib/NetworkManager/VPN and /etc/NetworkManager/VPN (NMVPNDIR=$NMVPNDIR)" ;;
esac
case "$DBUSPOLICYDIR" in
  /usr/share/dbus-1/system.d | /etc/dbus-1/system.d) ;;
  *) echo "NOTE: the system bus reads policies only from /usr/share/dbus-1/system.d and /etc/dbus-1/system.d (DBUSPOLICYDIR=$DBUSPOLICYDIR)" ;;
esac
if [ -z "$DESTDIR" ]; then
  echo "Done. Now reload the system bus's configuration so nm-tsp-service may own its name:"
  echo "  busctl call org.freedesktop.DBus / org.freedesktop.DBus ReloadConfig"
  echo "(or: systemctl reload dbus). NetworkManager picks up the .name file by itself."
  if ! getent passwd nm-tsp >/dev/null; then
    echo "nm-tsp-service runs as the system user nm-tsp when there is one (else as root, with two"
    echo "capabilities only). Make it, with its state directory, as the Debian package does:"
    echo "  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nm-tsp"
    echo "  install -d -m 0700 -o nm-tsp -g nm-tsp /var/lib/NetworkManager-tsp"
  fi
  echo "Sample configurations are in $DOCDIR/examples (tspc.service reads /etc/gogoc/gogoc.conf," \
    "tsp-broker.service /etc/tsp-broker/broker.toml)."
fi
