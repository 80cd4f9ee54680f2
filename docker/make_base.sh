#!/usr/bin/env bash
# Makes the base image `frtf-base:bookworm` on a machine that cannot pull from the public registry:
# debootstrap a minimal Debian root file system from the apt mirror this machine already uses, `docker import`
# it, then add Python 3.11 in a virtual environment (docker/base.Dockerfile), standing in for python:3.11-slim.
# The image carries this machine's local CA certificates and its http(s) pip index settings, because on
# machines whose egress goes through a TLS-inspecting proxy nothing inside a container reaches a package
# registry without them.  Keep such an image local; build from python:3.11-slim wherever the registry answers.
#
# Idempotent: an existing base (or root file system image) is reused; FRTF_BASE_REBUILD=1 makes both anew.
#   FRTF_BASE_IMAGE   tag of the base (default frtf-base:bookworm)
#   FRTF_BASE_WORK    scratch folder for the root file system (default /var/tmp/frtf-base; removed afterwards)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=docker/engine.sh
. "$here/engine.sh"

SUITE=bookworm
PYTHON_VERSION=3.11          # bookworm's python3; test_dockerfile.py checks it against requires-python
BASE_IMAGE=${FRTF_BASE_IMAGE:-frtf-base:$SUITE}
ROOTFS_IMAGE=frtf-rootfs:$SUITE
WORK=${FRTF_BASE_WORK:-/var/tmp/frtf-base}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The Debian repositories apt uses here for SUITE and its -updates/-security suites, as "URI SUITE" lines.
# apt-get indextargets reads both sources.list and deb822 .sources files, so no parsing of our own.
debian_repos() {
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's format placeholder, not a shell expansion
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null \
        | awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security"' | sort -u
}

make_rootfs() {
    local repos mirror rootfs="$WORK/rootfs"
    repos=$(debian_repos)
    mirror=$(awk -v s="$SUITE" '$2 == s {print $1; exit}' <<<"$repos")
    mirror=${mirror:-http://deb.debian.org/debian/}
    command -v debootstrap >/dev/null || { frtf_log "installing debootstrap"; frtf_apt_install debootstrap; }
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    # minbase only: Python comes with apt-get in base.Dockerfile, whose resolver (unlike debootstrap's)
    # follows virtual packages such as python3.11-venv's python3.11-distutils
    frtf_log "debootstrap $SUITE (minbase) from $mirror"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; frtf_die "debootstrap failed (log $WORK/debootstrap.log)"; }
    # the same repositories as this machine, so `apt-get install` inside the image reaches the same mirror
    if [ -n "$repos" ]; then
        awk '{print "deb " $1 " " $2 " main"}' <<<"$repos" >"$rootfs/etc/apt/sources.list"
    fi
    # a snapshot mirror's Release files are past their Valid-Until date; keep apt's setting for that
    if apt-config dump 2>/dev/null | grep -q 'Acquire::Check-Valid-Until "false"'; then
        printf 'Acquire::Check-Valid-Until "false";\n' >"$rootfs/etc/apt/apt.conf.d/99frtf-snapshot"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    frtf_log "docker import -> $ROOTFS_IMAGE"
    tar -C "$rootfs" --numeric-owner -c . | docker import --change 'CMD ["/bin/bash"]' - "$ROOTFS_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

# pip settings this machine uses that also work inside a container: http(s) indexes and trusted hosts.
# Local wheel folders and file:// indexes are left out: a container cannot see them (pip would only warn).
write_pip_conf() {
    local out=$1 key value kept=""
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$out"
    for key in index-url extra-index-url trusted-host; do
        value=$(pip_setting "$key")
        value=$(tr ' ' '\n' <<<"$value" | grep -E '^https?://|^[A-Za-z0-9.-]+(:[0-9]+)?$' | tr '\n' ' ' | sed 's/ $//' || true)
        if [ -n "$value" ]; then printf '%s = %s\n' "$key" "$value" >>"$out"; kept="$kept $key"; fi
    done
    frtf_log "pip.conf for the base: cert${kept:+ +$kept} (local wheel folders and file:// indexes left out)"
}

# a pip setting from the environment (PIP_INDEX_URL, ...) or pip's configuration files, empty if unset
pip_setting() {
    local key=$1 env_name
    env_name="PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")"
    if [ -n "${!env_name:-}" ]; then printf '%s' "${!env_name}"; return; fi
    command -v python3 >/dev/null || return 0
    python3 -m pip config list 2>/dev/null | awk -F= -v k="$key" '
        { name = $1; sub(/^[^.]*\./, "", name) }
        name == k { v = substr($0, index($0, "=") + 1); gsub(/^'\''|'\''$/, "", v); print v; exit }' \
        || true  # a python3 without pip: no settings to carry
}

main() {
    frtf_start_dockerd
    if [ "${FRTF_BASE_REBUILD:-0}" != 1 ] && image_exists "$BASE_IMAGE"; then
        frtf_log "base image $BASE_IMAGE exists (FRTF_BASE_REBUILD=1 to make it anew)"
        return 0
    fi
    mkdir -p "$WORK"
    if [ "${FRTF_BASE_REBUILD:-0}" = 1 ] || ! image_exists "$ROOTFS_IMAGE"; then
        make_rootfs
    else
        frtf_log "reusing $ROOTFS_IMAGE"
    fi
    local ctx="$WORK/context"
    rm -rf "$ctx"
    mkdir -p "$ctx/certs"
    cp "$here/base.Dockerfile" "$ctx/Dockerfile"
    # local CAs (a TLS-inspecting proxy's among them) are what the public bundle lacks
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$ctx/certs/"
    fi
    write_pip_conf "$ctx/pip.conf"
    frtf_log "building $BASE_IMAGE"
    docker build -q --build-arg "ROOTFS=$ROOTFS_IMAGE" --build-arg "PYTHON_VERSION=$PYTHON_VERSION" \
        -t "$BASE_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
    docker run --rm "$BASE_IMAGE" python -c 'import sys; print("base python", sys.version.split()[0])'
}

main "$@"
