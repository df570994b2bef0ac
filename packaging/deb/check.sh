#!/usr/bin/env bash
# The .deb for real, as root on this machine: build two versions, install the first,
# check every file, owner and mode, run what it installed, verify the unit, upgrade to
# the second with a changed conffile kept, remove (the node's state stays), purge
# (nothing stays). Fails on the first difference. CI runs it; it leaves the machine as
# it found it (the meshd user and groups stay after a purge, as Debian leaves system
# users).
#
#   packaging/deb/check.sh    (after `cargo build --release --workspace --bins`)
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "deb check: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
if dpkg -s meshd >/dev/null 2>&1; then fail "a meshd package is installed already: purge it first"; fi

out=$(mktemp -d)
trap 'dpkg --purge meshd >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
cargo deb -p meshd --no-build --deb-version 0.1.0-1 -o "$out/meshd_1.deb" >/dev/null
cargo deb -p meshd --no-build --deb-version 0.1.0-2 -o "$out/meshd_2.deb" >/dev/null
echo "built: $(dpkg-deb -f "$out/meshd_1.deb" Package Version | tr '\n' ' ')($(du -h "$out/meshd_1.deb" | cut -f1))"
# Every warning is fixed or justified in packaging/deb/lintian/meshd (installed as the
# package's override file).
command -v lintian >/dev/null || fail "lintian is not installed (apt-get install lintian)"
lintian --fail-on error,warning --tag-display-limit 0 "$out/meshd_1.deb" 2>&1 | grep -v 'root privileges' || true
lintian --fail-on error,warning --tag-display-limit 0 "$out/meshd_1.deb" >/dev/null 2>&1 || fail "lintian"
echo "lintian: clean"

# mode owner group path
expect() {
    local mode=$1 owner=$2 group=$3 path=$4
    [ -e "$path" ] || fail "$path missing"
    local got
    got=$(stat -c '%a %U %G' "$path")
    [ "$got" = "$mode $owner $group" ] || fail "$path is '$got', want '$mode $owner $group'"
}

DEBIAN_FRONTEND=noninteractive dpkg -i "$out/meshd_1.deb" >/dev/null
echo "installed: $(dpkg-query -W -f '${Package} ${Version} ${Status}' meshd)"
expect 755 root root /usr/bin/meshd
expect 755 root root /usr/bin/meshctl
expect 644 root root /usr/lib/systemd/system/meshd.service
expect 644 root root /usr/lib/sysusers.d/meshd.conf
expect 644 root root /usr/lib/tmpfiles.d/meshd.conf
expect 750 root meshd /etc/meshd
expect 640 root meshd /etc/meshd/meshd.toml
expect 700 meshd meshd /var/lib/meshd
expect 750 meshd meshd /run/meshd
expect 644 root root /usr/share/meshd/resolved-mesh.conf
for f in /usr/share/man/man1/meshd.1.gz /usr/share/man/man1/meshctl.1.gz \
    /usr/share/bash-completion/completions/meshd /usr/share/bash-completion/completions/meshctl \
    /usr/share/zsh/vendor-completions/_meshd /usr/share/zsh/vendor-completions/_meshctl \
    /usr/share/fish/vendor_completions.d/meshd.fish /usr/share/fish/vendor_completions.d/meshctl.fish \
    /usr/share/doc/meshd/copyright /usr/share/doc/meshd/README.md; do
    expect 644 root root "$f"
done
getent passwd meshd >/dev/null || fail "no meshd user"
getent group meshd-admin >/dev/null || fail "no meshd-admin group"
# The resolved drop-in is installed, not enabled.
[ ! -e /etc/systemd/resolved.conf.d/mesh.conf ] || fail "the resolved drop-in was enabled without being asked"
grep -q '^/etc/meshd/meshd.toml$' /var/lib/dpkg/info/meshd.conffiles || fail "meshd.toml is not a conffile"

# What it installed runs.
/usr/bin/meshd --version
/usr/bin/meshctl --version
/usr/bin/meshd check-config --config /etc/meshd/meshd.toml
zcat /usr/share/man/man1/meshd.1.gz | grep -q '^\.TH meshd 1' || fail "meshd.1 is no man page"
systemd-analyze verify /usr/lib/systemd/system/meshd.service
echo "files, owners, modes, binaries, unit: ok"

# meshd's real system calls (strace -f through init, join, a tunnel, DNS over UDP and
# TCP, an admin write, an upgrade and the drain) against the installed unit's filter.
# (--workspace, as the README's test command: the same features, so nothing is rebuilt.)
MESH_UNIT_FILE=/usr/lib/systemd/system/meshd.service cargo nextest run --workspace --no-fail-fast \
    -E 'test(=every_system_call_meshd_makes_is_allowed_by_the_units_filter)'
echo "the installed unit's system call filter allows every call meshd made: ok"

# Upgrade: a changed conffile is kept.
echo "# changed by the operator" >> /etc/meshd/meshd.toml
DEBIAN_FRONTEND=noninteractive dpkg -i "$out/meshd_2.deb" >/dev/null
[ "$(dpkg-query -W -f '${Version}' meshd)" = 0.1.0-2 ] || fail "not upgraded"
grep -q '^# changed by the operator$' /etc/meshd/meshd.toml || fail "the upgrade overwrote the changed meshd.toml"
expect 640 root meshd /etc/meshd/meshd.toml
echo "upgraded to 0.1.0-2, the changed meshd.toml kept"

# Remove keeps the node's state and config; purge removes them.
mkdir -p /var/lib/meshd/store && chown meshd:meshd /var/lib/meshd/store
dpkg --remove meshd >/dev/null
[ ! -e /usr/bin/meshd ] || fail "remove left /usr/bin/meshd"
[ -d /var/lib/meshd/store ] || fail "remove deleted /var/lib/meshd"
[ -e /etc/meshd/meshd.toml ] || fail "remove deleted the config"
dpkg --purge meshd >/dev/null
for p in /usr/bin/meshd /usr/bin/meshctl /etc/meshd /var/lib/meshd /run/meshd /usr/share/meshd \
    /usr/lib/systemd/system/meshd.service /usr/share/doc/meshd; do
    [ ! -e "$p" ] || fail "purge left $p"
done
if dpkg -s meshd >/dev/null 2>&1; then fail "still known to dpkg after purge"; fi
echo "removed (state kept), purged (nothing left): ok"
