#!/usr/bin/env bash
# Build evsed's Debian package (.deb) from this source tree.
#
#   packaging/build-deb.sh [--out DIR] [--version VERSION] [--lintian]
#
#   --out DIR          where the .deb (and .buildinfo / .changes) go; default build/deb
#   --version VERSION  package a different version: a changelog entry is added in the build
#                      copy only (used by the upgrade test); default: debian/changelog's
#   --lintian          run lintian on the result and fail on any error (E:) line
#
# Needs (Debian 12): dpkg-dev debhelper dh-virtualenv python3.11 python3.11-venv fakeroot
# build-essential, lintian for --lintian; PyPI reachable (dh-virtualenv pip-installs the
# project's dependencies into the private venv). See packaging/README.md.
#
# dpkg-buildpackage wants debian/ at the source root: the tree is copied to a temporary build
# directory with packaging/debian as debian/, and built there with a clean environment so
# that no pyenv / virtualenv Python is picked up instead of Debian's.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/.." && pwd)"
out="$src/build/deb"
version=""
run_lintian=0

while [ $# -gt 0 ]; do
    case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --version) version="$2"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --lintian) run_lintian=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

for tool in dpkg-buildpackage dh dh_virtualenv fakeroot /usr/bin/python3.11; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-deb.sh: $tool not found; apt-get install dpkg-dev debhelper" \
            "dh-virtualenv fakeroot build-essential python3.11-venv" >&2
        exit 69
    fi
done

# The package version follows the project's: warn when debian/changelog lags pyproject.toml.
upstream="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$src/pyproject.toml" | head -n 1)"
packaged="$(sed -n '1s/^evsed (\([^)]*\)).*/\1/p' "$here/debian/changelog")"
case "$packaged" in
"$upstream" | "$upstream"[+~]*) ;;
*) echo "build-deb.sh: WARNING: debian/changelog says $packaged, pyproject.toml $upstream" >&2 ;;
esac

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/evsed-deb.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tree="$work/evsed"
mkdir "$tree"

# The source files only: git's view when this is a work tree (tracked files and new ones not
# ignored), else everything except the usual build and cache directories.
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -C "$tree" -xf -
else
    tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./demo-state \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
        --exclude=.ruff_cache --exclude=.pytest_cache -cf - . | tar -C "$tree" -xf -
fi
rm -rf "$tree/debian"
cp -a "$src/packaging/debian" "$tree/debian"

# Files other parts of the project own. If one is missing the package still builds, with a
# minimal stand-in, and says so loudly.
if [ ! -f "$tree/systemd/evsed.service" ]; then
    echo "build-deb.sh: WARNING: systemd/evsed.service missing; packaging a minimal stand-in" >&2
    mkdir -p "$tree/systemd"
    cat >"$tree/systemd/evsed.service" <<'EOF'
[Unit]
Description=evsed EV charger daemon (stand-in unit: systemd/evsed.service was missing)
After=network-online.target dbus.service
Wants=network-online.target

[Service]
Type=notify
User=evsed
Group=evsed
ExecStart=/usr/bin/evsed --config /etc/evsed/evsed.toml
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
fi
if [ ! -f "$tree/packaging/dbus/org.evsed.conf" ]; then
    echo "build-deb.sh: WARNING: packaging/dbus/org.evsed.conf missing; packaging a stand-in" >&2
    mkdir -p "$tree/packaging/dbus"
    cat >"$tree/packaging/dbus/org.evsed.conf" <<'EOF'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- Stand-in policy: packaging/dbus/org.evsed.conf was missing at build time. -->
<busconfig>
  <policy user="evsed">
    <allow own="org.evsed"/>
    <allow send_destination="org.evsed"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.evsed"/>
  </policy>
  <policy group="evsed-operators">
    <allow send_destination="org.evsed"/>
  </policy>
</busconfig>
EOF
fi

if [ -n "$version" ]; then
    changelog="$tree/debian/changelog"
    maint="$(sed -n 's/^ -- \(.*>\)  .*/\1/p' "$changelog" | head -n 1)"
    {
        printf 'evsed (%s) bookworm; urgency=medium\n\n' "$version"
        printf '  * Build of version %s (packaging/build-deb.sh --version).\n\n' "$version"
        printf ' -- %s  %s\n\n' "$maint" "$(date -R)"
        cat "$changelog"
    } >"$changelog.new"
    mv "$changelog.new" "$changelog"
fi

# Debian's tools and Debian's python3.11 only: nothing from pyenv, a virtualenv or the
# caller's PIP_* settings (pip's configuration files still apply, e.g. a local mirror).
(cd "$tree" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="${HOME:-/root}" \
    LANG=C.UTF-8 ${DEB_BUILD_OPTIONS:+DEB_BUILD_OPTIONS="$DEB_BUILD_OPTIONS"} \
    dpkg-buildpackage -us -uc -b)

shopt -s nullglob
debs=("$work"/evsed_*.deb)
if [ ${#debs[@]} -ne 1 ]; then
    echo "build-deb.sh: expected one evsed_*.deb in $work, found ${#debs[@]}" >&2
    exit 1
fi
cp "$work"/evsed_*.deb "$work"/evsed_*.buildinfo "$work"/evsed_*.changes "$out"/
deb="$out/$(basename "${debs[0]}")"
echo "build-deb.sh: built $deb"

if [ "$run_lintian" = 1 ]; then
    report="$(lintian --info --display-info --no-tag-display-limit "$deb" 2>&1 || true)"
    printf '%s\n' "$report"
    if printf '%s\n' "$report" | grep -q '^E: '; then
        echo "build-deb.sh: lintian reported errors" >&2
        exit 1
    fi
fi
