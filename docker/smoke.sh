#!/usr/bin/env bash
# Smoke test of the Docker image: builds it and runs, inside it, `frtf --help`, the quickstart (CPU) and the web
# demo (HTTP 200 on its published port, then the HEALTHCHECK turning healthy).  Prints the build time, the
# image size and each outcome, and writes them to $FRTF_SMOKE_DIR/smoke.json.  Exits non-zero on any failure.
#
#   docker/smoke.sh                      # local base (docker/make_base.sh), fresh CPU build, 40-step quickstart
# Settings (environment):
#   FRTF_SMOKE_BASE=frtf-base:bookworm   base image; python:3.11-slim where the public registry answers
#                                        (only the default local base is made by make_base.sh)
#   FRTF_SMOKE_IMAGE=frtf:cpu            tag of the built image
#   FRTF_SMOKE_CACHE=0                   1: reuse Docker's layer cache (the build time then means little)
#   FRTF_SMOKE_STEPS=40                  quickstart training updates; "full" for the whole quickstart (160)
#   FRTF_SMOKE_DEMO=1                    0: skip the demo part
#   FRTF_SMOKE_PORT=7860                 host port (on 127.0.0.1) the demo is published on
#   FRTF_SMOKE_DIR=/var/tmp/frtf-smoke   output/ and cache/ mounted into the containers, logs, smoke.json
#   FRTF_SMOKE_KEEP=0                    1: keep FRTF_SMOKE_DIR's output/ (the sample cache is always kept)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=docker/engine.sh
. "$here/engine.sh"

BASE=${FRTF_SMOKE_BASE:-frtf-base:bookworm}
IMAGE=${FRTF_SMOKE_IMAGE:-frtf:cpu}
STEPS=${FRTF_SMOKE_STEPS:-40}
PORT=${FRTF_SMOKE_PORT:-7860}
DIR=${FRTF_SMOKE_DIR:-/var/tmp/frtf-smoke}
DEMO_NAME=frtf-smoke-demo-$$
HTTP_TIMEOUT_S=300
HEALTH_TIMEOUT_S=120

say() { printf '\n== smoke: %s\n' "$*"; }
fail() { printf '\nSMOKE FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
    docker rm -f "$DEMO_NAME" >/dev/null 2>&1 || true
    if [ "${FRTF_SMOKE_KEEP:-0}" != 1 ]; then rm -rf "$DIR/output"; fi
}
trap cleanup EXIT

# all in one function: bash then reads the whole script before running it, so editing the file
# during a run (it takes many minutes) cannot change what the run does
main() {
    started=$(date +%s)
    frtf_start_dockerd

    if [ "$BASE" = "frtf-base:bookworm" ]; then
        say "base image $BASE (docker/make_base.sh)"
        FRTF_BASE_IMAGE=$BASE "$here/make_base.sh" || fail "could not make the base image $BASE"
    fi

    say "building $IMAGE (VARIANT=cpu, BASE_IMAGE=$BASE)"
    mkdir -p "$DIR"
    cache_flag=--no-cache
    [ "${FRTF_SMOKE_CACHE:-0}" = 1 ] && cache_flag=
    previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    t0=$(date +%s)
    # shellcheck disable=SC2086  # cache_flag is one word or none
    docker build $cache_flag --build-arg "BASE_IMAGE=$BASE" --build-arg VARIANT=cpu -t "$IMAGE" "$repo" \
        >"$DIR/build.log" 2>&1 || { tail -30 "$DIR/build.log" >&2; fail "docker build (log $DIR/build.log)"; }
    build_s=$(( $(date +%s) - t0 ))
    # the image this build replaced would stay behind untagged, 3 GB a run
    if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
    size_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
    size_gb=$(awk -v b="$size_bytes" 'BEGIN { printf "%.2f", b / 1e9 }')
    echo "built in ${build_s} s, image size ${size_gb} GB"

    say "frtf --help (and the user is not root)"
    help_out=$(docker run --rm "$IMAGE" frtf --help) || fail "frtf --help exited non-zero"
    grep -q quickstart <<<"$help_out" || fail "frtf --help does not list quickstart"
    uid=$(docker run --rm "$IMAGE" id -u)
    [ "$uid" != 0 ] || fail "the image runs as root"
    gid=$(docker run --rm "$IMAGE" id -g)
    echo "frtf --help: ok; runs as uid $uid"

    say "quickstart (CPU, ${STEPS} updates)"
    # bind-mounted folders must be writable by the image's user
    mkdir -p "$DIR/output" "$DIR/cache"
    chown "$uid:$gid" "$DIR/output" "$DIR/cache" 2>/dev/null || chmod 0777 "$DIR/output" "$DIR/cache"
    steps_args=()
    [ "$STEPS" = full ] || steps_args=(--max-steps "$STEPS")
    t0=$(date +%s)
    docker run --rm -v "$DIR/output:/output" -v "$DIR/cache:/cache" "$IMAGE" \
        frtf quickstart --out /output/quickstart --no-progress "${steps_args[@]}" 2>&1 | tee "$DIR/quickstart.log" \
        || fail "quickstart (log $DIR/quickstart.log)"
    quickstart_s=$(( $(date +%s) - t0 ))
    report="$DIR/output/quickstart/quickstart.json"
    [ -s "$report" ] || fail "quickstart wrote no $report"
    quickstart=$(python3 - "$report" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("mean accuracy %.3f -> %.3f after %d updates" % (r["mean_before"], r["mean_after"], r["steps"]))
EOF
    )
    echo "quickstart: ok in ${quickstart_s} s, $quickstart"

    demo_status=skipped
    health=skipped
    if [ "${FRTF_SMOKE_DEMO:-1}" = 1 ]; then
        say "demo (frtf demo on 0.0.0.0:7860, published on 127.0.0.1:$PORT)"
        docker run --rm "$IMAGE" frtf demo --help >/dev/null 2>&1 \
            || fail "this image has no working 'frtf demo' (FRTF_SMOKE_DEMO=0 skips the demo part)"
        # a short health interval so the smoke test need not wait the image's 30 s
        docker run -d --name "$DEMO_NAME" -p "127.0.0.1:$PORT:7860" \
            --health-interval 5s --health-start-period 300s \
            -v "$DIR/output:/output" -v "$DIR/cache:/cache" "$IMAGE" \
            frtf demo /output/quickstart/run --host 0.0.0.0 --port 7860 >/dev/null \
            || fail "could not start the demo container"
        t0=$(date +%s)
        demo_status=000
        while [ $(( $(date +%s) - t0 )) -lt "$HTTP_TIMEOUT_S" ]; do
            [ "$(docker inspect -f '{{.State.Running}}' "$DEMO_NAME")" = true ] || {
                docker logs "$DEMO_NAME" 2>&1 | tail -30 >&2; fail "the demo container stopped"; }
            demo_status=$(python3 - "$PORT" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print("000")
EOF
    )
            [ "$demo_status" = 200 ] && break
            sleep 3
        done
        demo_s=$(( $(date +%s) - t0 ))
        [ "$demo_status" = 200 ] || { docker logs "$DEMO_NAME" 2>&1 | tail -30 >&2
            fail "no HTTP 200 from the demo on 127.0.0.1:$PORT within ${HTTP_TIMEOUT_S} s (last: $demo_status)"; }
        echo "demo: HTTP $demo_status after ${demo_s} s"
        t0=$(date +%s)
        health=starting
        while [ $(( $(date +%s) - t0 )) -lt "$HEALTH_TIMEOUT_S" ]; do
            health=$(docker inspect -f '{{.State.Health.Status}}' "$DEMO_NAME")
            [ "$health" = healthy ] && break
            [ "$health" = unhealthy ] && break
            sleep 2
        done
        docker logs "$DEMO_NAME" >"$DIR/demo.log" 2>&1 || true
        [ "$health" = healthy ] || fail "the demo container's HEALTHCHECK says '$health' (log $DIR/demo.log)"
        echo "demo: HEALTHCHECK $health"
        docker rm -f "$DEMO_NAME" >/dev/null
    fi

    total_s=$(( $(date +%s) - started ))
    python3 - "$DIR/smoke.json" <<EOF
import json, sys
json.dump({"date": "$(date -u +%Y-%m-%dT%H:%MZ)", "image": "$IMAGE", "base": "$BASE",
           "docker": "$(docker version -f '{{.Server.Version}}')", "fresh_build": "$cache_flag" == "--no-cache",
           "build_seconds": $build_s, "image_bytes": $size_bytes, "quickstart_steps": "$STEPS",
           "quickstart_seconds": $quickstart_s, "quickstart": "$quickstart", "demo_http_status": "$demo_status",
           "demo_health": "$health", "total_seconds": $total_s}, open(sys.argv[1], "w"), indent=1)
EOF
    say "passed in ${total_s} s"
    printf '  build      %s s (%s), image %s GB\n' "$build_s" "${cache_flag:-with layer cache}" "$size_gb"
    printf '  quickstart %s s, %s\n' "$quickstart_s" "$quickstart"
    printf '  demo       HTTP %s, HEALTHCHECK %s\n' "$demo_status" "$health"
    printf '  figures    %s\n' "$DIR/smoke.json"
}

main "$@"
