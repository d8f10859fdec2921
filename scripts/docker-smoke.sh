#!/usr/bin/env bash
# Build the serving images from docker/Dockerfile with buildah and smoke-test them (CI runs this; no
# Docker engine needed).
#
# Usage: scripts/docker-smoke.sh [MODEL_REPOSITORY]
#
#  1. installs buildah, podman and debootstrap when missing (apt);
#  2. makes a Debian bookworm base with debootstrap once: podman's image store keeps it, tagged with
#     a hash of its inputs, and later runs reuse it;
#  3. builds the CPU image (EXTRA=serve-cpu) on that base (buildah --layers reuses unchanged steps)
#     and checks it holds neither torch nor timm;
#  4. runs the image's own ENTRYPOINT + CMD with MODEL_REPOSITORY mounted at /models, waits until
#     the image's own HEALTHCHECK command passes, checks the log names the onnxruntime providers in
#     use and that the server runs as non-root, posts Fashion-MNIST test images (PNG) to /v1/predict
#     and /v1/predict/batch and checks the labels (scripts/smoke_client.py), then stops it as
#     `docker stop` does (SIGTERM to the init) and expects a graceful shutdown;
#  5. runs it with PRODUCTREC_PROVIDER=cuda and expects a refusal (non-zero exit): there is no CUDA here;
#  6. builds the GPU image (EXTRA=serve: onnxruntime-gpu) on the same base, checks it holds neither
#     torch nor timm, that the CUDA major its onnxruntime-gpu was built for is the one of the
#     Dockerfile's default base, that it refuses PRODUCTREC_PROVIDER=cuda without a GPU, and runs
#     step 4 on it with the default PRODUCTREC_PROVIDER=auto (onnxruntime-gpu's CPU provider).
#
# Without MODEL_REPOSITORY, an untrained three-member repository is exported once and cached
# (scripts/untrained_repository.py). Needs root, the .venv made by ./scripts/test.sh, and Debian's
# and PyPI's registries. Environment: PYTHON (default .venv/bin/python), PRODUCTREC_SMOKE_CACHE
# (default ~/.cache/productrec), PIP_CERT (CA bundle handed to pip in the build as a secret, default
# the system bundle), READY_TIMEOUT_S (default 180).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${PRODUCTREC_SMOKE_CACHE:-$HOME/.cache/productrec}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
REFUSAL_TIMEOUT_S=120
STOP_TIMEOUT_S=30
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_PACKAGES=python3,python3-venv,ca-certificates
CPU_IMAGE=localhost/productrec:smoke-cpu
GPU_IMAGE=localhost/productrec:smoke-gpu
export BUILDAH_ISOLATION=chroot  # the only isolation that works without a container engine here
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/productrec-smoke.XXXXXX")
CONTAINERS=()
SERVER_PID=""
TIMINGS=()
STEP_NAME=""
STEP_STARTED=0

log() { echo "docker-smoke: $*"; }
die() { echo "docker-smoke: FAILED: $*" >&2; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
step() {
    [ -z "$STEP_NAME" ] || step_done
    STEP_NAME=$1
    STEP_STARTED=$(now)
    echo "== $STEP_NAME"
}
step_done() {
    local seconds
    seconds=$(elapsed "$STEP_STARTED")
    TIMINGS+=("$(printf '%7s s  %s' "$seconds" "$STEP_NAME")")
    echo "   ($seconds s)"
    STEP_NAME=""
}

descendants() {  # every process below PID, children first listed after their parent
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

process_named() {  # PID NAME: the processes below PID whose command name is NAME
    local pid
    for pid in $(descendants "$1"); do
        if [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$2" ]; then echo "$pid"; fi
    done
}

kill_tree() {  # SIGKILL PID and everything below it (collected first: orphans would be reparented)
    local pids
    pids="$1 $(descendants "$1" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT
    [ -z "$STEP_NAME" ] || TIMINGS+=("$(printf '%7s s  %s (failed)' "$(elapsed "$STEP_STARTED")" "$STEP_NAME")")
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill_tree "$SERVER_PID"
    fi
    for container in "${CONTAINERS[@]}"; do
        buildah rm "$container" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
    if [ ${#TIMINGS[@]} -gt 0 ]; then
        echo "== timings"
        printf '%s\n' "${TIMINGS[@]}"
    fi
    if [ "$status" -eq 0 ]; then log "passed"; else log "failed (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

image_config() {  # IMAGE KEY: the image's Docker config entry KEY as NUL-separated words
    buildah inspect --type image "$1" | "$PYTHON" -c '
import json, sys
config = json.load(sys.stdin)["Docker"]["config"]
key = sys.argv[1]
if key == "Command":
    words = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
else:  # Healthcheck: ["CMD", argv...] or ["CMD-SHELL", command]
    test = (config.get("Healthcheck") or {}).get("Test") or []
    words = test[1:] if test[:1] == ["CMD"] else ["/bin/sh", "-c", test[1]] if test[:1] == ["CMD-SHELL"] else []
if not words:
    sys.exit(f"the image has no {key}")
sys.stdout.write("\0".join(words))
' "$2"
}

new_container() {  # IMAGE: sets CONTAINER to a new working container of IMAGE, removed on exit
    CONTAINER="productrec-smoke-$$-${#CONTAINERS[@]}"
    buildah from --pull-never --name "$CONTAINER" "$1" >/dev/null
    CONTAINERS+=("$CONTAINER")
}

build_image() {  # TAG EXTRA
    local log_file="$WORK/build-$2.log" status
    local secret=()
    [ -s "$CA_BUNDLE" ] && secret=(--secret "id=pip_cert,src=$CA_BUNDLE")
    set +e
    buildah bud --layers --format docker -f docker/Dockerfile \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg EXTRA="$2" "${secret[@]}" -t "$1" . 2>&1 \
        | tee "$log_file" | grep --line-buffered -E '^\[[0-9]+/[0-9]+\] STEP [0-9]+/' | cut -c1-140 | sed 's/^/   /'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log_file" >&2
        die "building $1 (EXTRA=$2) failed; the end of the build log is above"
    fi
}

check_no_training_stack() {  # IMAGE
    new_container "$1"
    buildah run "$CONTAINER" -- python -c '
import importlib.util, sys
found = [name for name in ("torch", "timm", "torchvision") if importlib.util.find_spec(name)]
sys.exit(f"found {found}" if found else 0)' || die "$1 contains the training stack; the serving image must not"
    local commands
    commands=$(buildah run "$CONTAINER" -- productrec --help | sed -n 's/^    \([a-z][a-z]*\) .*/\1/p' | tr '\n' ' ')
    [ "$commands" = "serve score " ] || die "$1: productrec --help lists '$commands'; the serving image has serve and score only"
    log "$1: no torch, timm or torchvision; $(podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
}

smoke_service() {  # IMAGE LABEL: start, wait for the HEALTHCHECK, predict, stop, each a timed step
    local image=$1 label=$2 server port server_log="$WORK/server-${1##*:}.log" uid init_pid status deadline
    local command=() healthcheck=()
    step "$label: start the service, wait for its HEALTHCHECK"
    new_container "$image"
    server=$CONTAINER
    mapfile -d '' -t command < <(image_config "$image" Command)
    mapfile -d '' -t healthcheck < <(image_config "$image" Healthcheck)
    port=$(free_port)
    buildah run -e PRODUCTREC_PORT="$port" -v "$REPOSITORY:/models:ro" "$server" -- "${command[@]}" > "$server_log" 2>&1 &
    SERVER_PID=$!
    log "started ${command[*]} on port $port"
    deadline=$((SECONDS + READY_TIMEOUT_S))
    until buildah run -e PRODUCTREC_PORT="$port" "$server" -- "${healthcheck[@]}" > "$WORK/healthcheck.log" 2>&1; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 30 "$server_log" >&2
            die "$image: the service exited before it was ready"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$server_log" >&2
            cat "$WORK/healthcheck.log" >&2
            die "$image: not ready ${READY_TIMEOUT_S} s after start"
        fi
        sleep 1
    done
    log "healthy: ${healthcheck[*]}"
    grep -q -E "serving ensemble .*providers \[" "$server_log" || { cat "$server_log" >&2; die "$image: the log does not name the providers in use"; }
    log "log: $(grep -m1 -o -E "serving ensemble .*providers \[.*" "$server_log")"
    uid=$(process_named "$SERVER_PID" productrec | head -n 1 | xargs -r ps -o uid= -p | tr -d ' ')
    [ -n "$uid" ] || die "$image: cannot find the productrec process"
    [ "$uid" != "0" ] || die "$image: the service runs as root"
    log "the service runs as uid $uid"

    step "$label: /v1/predict and /v1/predict/batch with real images"
    "$PYTHON" scripts/smoke_client.py check "http://127.0.0.1:$port" "$REPOSITORY" "${IMAGES[@]}" \
        || { tail -n 30 "$server_log" >&2; die "$image: the HTTP checks failed"; }

    step "$label: stop with SIGTERM to the init, as docker stop does"
    init_pid=$(process_named "$SERVER_PID" dumb-init | head -n 1)
    [ -n "$init_pid" ] || die "$image: no dumb-init process under the container"
    kill -TERM "$init_pid"
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "$image: the service ignored SIGTERM for ${STOP_TIMEOUT_S} s"
        sleep 0.5
    done
    status=0
    wait "$SERVER_PID" || status=$?
    SERVER_PID=""
    # uvicorn re-raises the signal after its graceful shutdown: 143 (128 + SIGTERM) is a clean stop.
    case $status in
        0 | 143) ;;
        *) tail -n 20 "$server_log" >&2; die "$image: the service exited $status after SIGTERM" ;;
    esac
    grep -q "Finished server process" "$server_log" || { tail -n 20 "$server_log" >&2; die "$image: no graceful shutdown in the log"; }
    log "stopped cleanly (exit $status)"
}

expect_refusal() {  # IMAGE: with PRODUCTREC_PROVIDER=cuda the service must exit non-zero
    local log_file="$WORK/refusal-${1##*:}.log" pid status command=()
    new_container "$1"
    mapfile -d '' -t command < <(image_config "$1" Command)
    buildah run -e PRODUCTREC_PROVIDER=cuda -e PRODUCTREC_PORT="$(free_port)" \
        -v "$REPOSITORY:/models:ro" "$CONTAINER" -- "${command[@]}" > "$log_file" 2>&1 &
    pid=$!
    local deadline=$((SECONDS + REFUSAL_TIMEOUT_S))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            kill_tree "$pid"
            tail -n 20 "$log_file" >&2
            die "$1 still runs ${REFUSAL_TIMEOUT_S} s after start with PRODUCTREC_PROVIDER=cuda and no GPU"
        fi
        sleep 0.5
    done
    status=0
    wait "$pid" || status=$?
    if [ "$status" -eq 0 ]; then
        tail -n 20 "$log_file" >&2
        die "$1 exited 0 with PRODUCTREC_PROVIDER=cuda and no GPU; it must refuse to start"
    fi
    grep -q "refusing to start" "$log_file" || { tail -n 20 "$log_file" >&2; die "$1: no 'refusing to start' in its log"; }
    log "$1 refused PRODUCTREC_PROVIDER=cuda (exit $status): $(grep -m1 -o 'ProviderUnavailableError: .*' "$log_file" | cut -c1-200)"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------------------------------ steps
step "tools: buildah, podman, debootstrap"
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and buildah's chroot isolation need it"
[ -x "$PYTHON" ] || die "$PYTHON not found: run ./scripts/test.sh first (it makes .venv), or set PYTHON"
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman debootstrap >/dev/null
fi
log "$(buildah --version), $(podman --version)"
CA_BUNDLE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}

step "base image: debootstrap $DEBIAN_SUITE (cached)"
BASE_KEY=$(printf '%s\n' "minbase" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$DEBIAN_PACKAGES" | sha256sum | cut -c1-12)
BASE_IMAGE="localhost/productrec-smoke-base:$DEBIAN_SUITE-$BASE_KEY"
if podman image exists "$BASE_IMAGE"; then
    log "reusing $BASE_IMAGE"
else
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
        > "$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" > "$WORK/import.log" 2>&1 \
        || { cat "$WORK/import.log" >&2; die "podman import failed"; }
    rm -rf "$rootfs"
    log "made $BASE_IMAGE"
fi

step "model repository and test images"
if [ $# -ge 1 ]; then
    REPOSITORY=$(realpath "$1")
    [ -f "$REPOSITORY/ensemble.json" ] || die "$REPOSITORY has no ensemble.json: not a model repository"
else
    source_key=$(cat scripts/untrained_repository.py app/contract/manifest.py training/export.py | sha256sum | cut -c1-12)
    REPOSITORY="$CACHE/untrained-repository-$source_key"
    if [ ! -f "$REPOSITORY/ensemble.json" ]; then
        rm -rf "$REPOSITORY"
        nice "$PYTHON" scripts/untrained_repository.py "$REPOSITORY" > "$WORK/repository.log" 2>&1 \
            || { tail -n 30 "$WORK/repository.log" >&2; die "exporting the untrained repository failed"; }
    fi
fi
log "repository $REPOSITORY"
"$PYTHON" scripts/smoke_client.py images "$WORK/images" --count 4 > "$WORK/images.txt"
mapfile -t IMAGES < "$WORK/images.txt"
log "${#IMAGES[@]} test images: $(basename -a "${IMAGES[@]}" | tr '\n' ' ')"

step "build the CPU image ($CPU_IMAGE)"
build_image "$CPU_IMAGE" serve-cpu

step "CPU image: no torch or timm"
check_no_training_stack "$CPU_IMAGE"

smoke_service "$CPU_IMAGE" "CPU image"

step "CPU image: PRODUCTREC_PROVIDER=cuda is refused"
expect_refusal "$CPU_IMAGE"

step "build the GPU image ($GPU_IMAGE, onnxruntime-gpu)"
build_image "$GPU_IMAGE" serve

step "GPU image: no torch or timm"
check_no_training_stack "$GPU_IMAGE"

step "GPU image: onnxruntime-gpu's CUDA matches the default base"
new_container "$GPU_IMAGE"
ort_cuda=$(buildah run "$CONTAINER" -- python -c 'from onnxruntime.capi import build_and_package_info as b; print(b.cuda_version)')
base_tag=$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)
[[ "$base_tag" == *cudnn* && "${base_tag#*:}" == "${ort_cuda%%.*}".* ]] \
    || die "onnxruntime-gpu is built for CUDA $ort_cuda but docker/Dockerfile's default base is $base_tag: pin them together"
log "onnxruntime-gpu built for CUDA $ort_cuda; default base $base_tag"

step "GPU image: PRODUCTREC_PROVIDER=cuda is refused without a GPU"
expect_refusal "$GPU_IMAGE"

# With the default PRODUCTREC_PROVIDER=auto, onnxruntime-gpu without a GPU serves on its CPU provider.
smoke_service "$GPU_IMAGE" "GPU image (no GPU, provider auto)"
step_done
