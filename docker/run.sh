#!/usr/bin/env bash
# Start a stethoscope-nano container, like jetson-inference's docker/run.sh.  Run it from the repo root:
#
#   docker/run.sh --model heart                      the live service on a Jetson (models/heart, default mic)
#   docker/run.sh --model heart --source mic:USB --http 0.0.0.0:8080
#   docker/run.sh --model heart --detach             as an appliance: in the background, restarted on boot
#   docker/run.sh --run bash                         a shell in the device image instead of the service
#   docker/run.sh --container stetho-host            the workstation (training) image: a shell, GPU if any
#   docker/run.sh --dry-run ...                      print the docker command instead of running it
#
# Options:
#   -c, --container IMAGE   image (default: stetho:r<L4T version> on a Jetson, e.g. stetho:r32.7.1;
#                           stetho-host on a PC)
#   -m, --model NAME        use models/NAME as the model (sets STETHO_MODEL_DIR=/models/NAME)
#   --source SPEC           mic | mic:NAME_OR_INDEX | file:/data/PATH | stdin
#   --http HOST:PORT        status page address (default 127.0.0.1:8080; --network host shares the board's)
#   --backend NAME          auto | tensorrt | jetson | onnxruntime
#   -v, --volume HOST:DIR   one more mount (repeatable)
#   -d, --detach            run in the background with --restart unless-stopped (else: -it --rm)
#   -r, --run COMMAND...    run COMMAND instead of the default (must come last)
#   --dry-run               print the command, do not run it
#
# Always mounted: ./models → /models and ./data → /data (results go to /data/runs), and a tmpfs on /run/stetho
# (the latest overlay, rewritten every window).
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "run.sh: $*" >&2; exit 1; }

IMAGE="" MODEL="" SOURCE="" HTTP="" BACKEND="" DETACH=0 DRY_RUN=0
VOLUMES=()
COMMAND=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage 0 ;;
        -c|--container) IMAGE=${2:?--container needs an image}; shift 2 ;;
        --container=*) IMAGE=${1#*=}; shift ;;
        -m|--model) MODEL=${2:?--model needs a name}; shift 2 ;;
        --model=*) MODEL=${1#*=}; shift ;;
        --source) SOURCE=${2:?--source needs a value}; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --http) HTTP=${2:?--http needs HOST:PORT}; shift 2 ;;
        --http=*) HTTP=${1#*=}; shift ;;
        --backend) BACKEND=${2:?--backend needs a name}; shift 2 ;;
        --backend=*) BACKEND=${1#*=}; shift ;;
        -v|--volume) VOLUMES+=(--volume "${2:?--volume needs HOST:DIR}"); shift 2 ;;
        --volume=*) VOLUMES+=(--volume "${1#*=}"); shift ;;
        -d|--detach) DETACH=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -r|--run) shift; [ $# -gt 0 ] || die "--run needs a command"; COMMAND=("$@"); break ;;
        *) echo "run.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
done

ARCH=${ARCH:-$(uname -m)}
L4T_RELEASE_FILE=${L4T_RELEASE_FILE:-/etc/nv_tegra_release}

# "# R32 (release), REVISION: 7.1, GCID: ..." → 32.7.1
l4t_version() {
    sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\),.*/\1.\2/p' "$L4T_RELEASE_FILE" 2>/dev/null | head -n 1
}

if [ -z "$IMAGE" ]; then
    if [ "$ARCH" = aarch64 ] && [ -n "$(l4t_version)" ]; then
        IMAGE="stetho:r$(l4t_version)"
    elif [ "$ARCH" = aarch64 ]; then
        die "no $L4T_RELEASE_FILE: not a Jetson with JetPack? Name the image with --container"
    else
        IMAGE="stetho-host"
    fi
fi

ROOT=$PWD
[ -d "$ROOT/deploy_jetson" ] || die "run this from the stethoscope-nano repo root (docker/run.sh)"
if [ -n "$MODEL" ] && [ ! -d "$ROOT/models/$MODEL" ]; then
    die "models/$MODEL: no such model folder (copy the exported models/<name> here first)"
fi

ARGS=(run --network host)
if [ "$DETACH" = 1 ]; then
    ARGS+=(--detach --restart unless-stopped --name stetho)
elif [ -t 0 ]; then
    ARGS+=(-it --rm)
else
    ARGS+=(-i --rm)   # no terminal (a script, a CI job): -t would fail
fi

case "$IMAGE" in
    *host*)
        # the workstation image: data and models in its work tree, the GPU when there is one
        if command -v nvidia-smi >/dev/null 2>&1; then
            ARGS+=(--gpus all)
        fi
        ARGS+=(--shm-size 2g --volume "$ROOT/data:/workspace/stetho/data"
               --volume "$ROOT/models:/workspace/stetho/models")
        ;;
    *)
        # the device image: the GPU through the nvidia runtime, the sound card, models and data
        # (the latest overlay, rewritten every window, goes to a tmpfs: STETHO_LATEST=/run/stetho/latest.png)
        ARGS+=(--runtime nvidia --device /dev/snd --group-add audio --group-add video
               --volume "$ROOT/models:/models" --volume "$ROOT/data:/data" --tmpfs "/run/stetho:rw,size=16m,mode=1777")
        [ -f "$L4T_RELEASE_FILE" ] && ARGS+=(--volume "$L4T_RELEASE_FILE:/etc/nv_tegra_release:ro")
        [ -n "$MODEL" ] && ARGS+=(--env "STETHO_MODEL_DIR=/models/$MODEL")
        [ -n "$SOURCE" ] && ARGS+=(--env "STETHO_SOURCE=$SOURCE")
        [ -n "$HTTP" ] && ARGS+=(--env "STETHO_HTTP=$HTTP")
        [ -n "$BACKEND" ] && ARGS+=(--env "STETHO_BACKEND=$BACKEND")
        if [ ${#COMMAND[@]} -gt 0 ]; then
            ARGS+=(--entrypoint "${COMMAND[0]}")
            COMMAND=("${COMMAND[@]:1}")
        fi
        ;;
esac
ARGS+=("${VOLUMES[@]}" "$IMAGE" "${COMMAND[@]}")

DOCKER=(docker)
if [ "$(id -u)" != 0 ] && ! id -nG | grep -qw docker; then
    DOCKER=(sudo docker)
fi

printf 'run.sh: %s\n' "${DOCKER[*]} ${ARGS[*]}"
if [ "$DRY_RUN" = 1 ]; then
    exit 0
fi
mkdir -p "$ROOT/models" "$ROOT/data"   # else docker creates them owned by root
exec "${DOCKER[@]}" "${ARGS[@]}"
