#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs Debian's docker.io when there is no dockerd, and starts
# dockerd in the background when nothing is listening (machines without systemd, like the development
# and CI machines of this project).  Sourced by make_base.sh and smoke.sh, or run on its own.
#   FRTF_DOCKERD_LOG      dockerd's log file (default /var/log/frtf-dockerd.log)
#   FRTF_STORAGE_DRIVER   force a storage driver; by default overlay2, then fuse-overlayfs, then vfs
set -euo pipefail

frtf_log() { printf '[frtf-docker] %s\n' "$*" >&2; }
frtf_die() { printf '[frtf-docker] error: %s\n' "$*" >&2; exit 1; }

# apt-get with a wait on the dpkg lock: another install may be running on a shared machine
frtf_apt_install() {
    [ "$(id -u)" -eq 0 ] || frtf_die "installing $* needs root (apt-get)"
    if [ -z "${FRTF_APT_UPDATED:-}" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
        FRTF_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@" >/dev/null
}

frtf_engine_up() { docker info >/dev/null 2>&1; }

frtf_start_dockerd() {
    local log=${FRTF_DOCKERD_LOG:-/var/log/frtf-dockerd.log} driver drivers
    command -v dockerd >/dev/null || { frtf_log "installing docker.io (Debian's Docker engine)"; frtf_apt_install docker.io; }
    command -v docker >/dev/null || frtf_die "no docker command after installing docker.io"
    if frtf_engine_up; then return 0; fi
    [ "$(id -u)" -eq 0 ] || frtf_die "no Docker engine answers and starting dockerd needs root"
    # a dockerd that died leaves its pid file behind, and a new one refuses to start beside it
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    drivers=${FRTF_STORAGE_DRIVER:-overlay2 fuse-overlayfs vfs}
    for driver in $drivers; do
        if [ "$driver" = fuse-overlayfs ] && ! command -v fuse-overlayfs >/dev/null; then
            frtf_apt_install fuse-overlayfs || continue
        fi
        frtf_log "starting dockerd (storage driver $driver, log $log)"
        # its own session: stopping the script that started it (Ctrl-C, a killed job) leaves the engine up
        setsid nohup dockerd --storage-driver "$driver" >>"$log" 2>&1 &
        local pid=$!
        for _ in $(seq 1 60); do
            if frtf_engine_up; then frtf_log "dockerd is up (pid $pid)"; return 0; fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        # not up: stop this attempt before trying the next driver
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        frtf_log "dockerd did not start with $driver (see $log)"
    done
    frtf_die "could not start dockerd with any of: $drivers (see $log)"
}

# run on its own: just make sure the engine is there
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    frtf_start_dockerd
    docker version --format 'Docker engine {{.Server.Version}} is up'
fi
