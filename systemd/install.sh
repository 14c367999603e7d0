#!/usr/bin/env bash
# Install stethoscope-nano as a system service (Jetson Nano with JetPack 4.6, or any systemd Linux).
#
#   sudo systemd/install.sh --model-dir models/heart          install or upgrade, enable and (re)start
#   sudo systemd/install.sh --model-dir models/heart --source mic:USB --http 0.0.0.0:8080
#   sudo systemd/install.sh --uninstall                        remove it all but the recorded data
#   sudo systemd/install.sh --uninstall --purge                ... and the recorded data, logs and user
#   DESTDIR=/tmp/root systemd/install.sh --model-dir models/heart
#                                                              stage into /tmp/root only: no user, no
#                                                              chown, no systemctl (implies --no-start)
#
# What goes where (every path below is prefixed with $DESTDIR when it is set):
#   /opt/stetho                          the code (stetho/, deploy_jetson/, docs), root-owned, read-only
#   /var/lib/stetho/models/<name>        the chosen model (+ the TensorRT engine the service caches there)
#   /var/lib/stetho/runs                 recorded results (kept by --uninstall)
#   /var/log/stetho                      logs (kept by --uninstall)
#   /etc/default/stetho                  settings (from systemd/stetho.env; your edits are kept on upgrade)
#   /etc/systemd/system/stetho.service   the unit; stetho.service.d/50-gpu-devices.conf when this board has
#                                        GPU device nodes the unit does not list (Orin, dGPU)
# Running it again with the same arguments changes nothing (idempotent).
set -euo pipefail

NAME=stetho
SERVICE_USER=stetho
PREFIX=/opt/stetho
STATE_DIR=/var/lib/stetho
LOG_DIR=/var/log/stetho
ENV_FILE=/etc/default/stetho
UNIT_DIR=/etc/systemd/system
UNIT=$NAME.service
GPU_DROPIN=50-gpu-devices.conf
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK_PYTHON=${CHECK_PYTHON:-python3}   # validates the model with the repo's own code (needs numpy)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
say() { echo "[$NAME] $*"; }
die() { echo "[$NAME] error: $*" >&2; exit 1; }

MODEL_DIR="" SOURCE="" HTTP="" BACKEND="" START=1 UNINSTALL=0 PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --model-dir) MODEL_DIR=${2:?--model-dir needs a folder}; shift 2 ;;
        --model-dir=*) MODEL_DIR=${1#*=}; shift ;;
        --source) SOURCE=${2:?--source needs a value}; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --http) HTTP=${2:?--http needs HOST:PORT}; shift 2 ;;
        --http=*) HTTP=${1#*=}; shift ;;
        --backend) BACKEND=${2:?--backend needs a name}; shift 2 ;;
        --backend=*) BACKEND=${1#*=}; shift ;;
        --no-start) START=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "[$NAME] unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge only goes with --uninstall"

# -- where to write ---------------------------------------------------------------------------------------------
DESTDIR=${DESTDIR:-}
STAGED=0
if [ -n "$DESTDIR" ]; then
    case "$DESTDIR" in
        /*) ;;
        *) die "DESTDIR must be an absolute path, got '$DESTDIR'" ;;
    esac
    DESTDIR=$(cd / && realpath -m "$DESTDIR")
    [ "$DESTDIR" = / ] && die "DESTDIR=/ is the running system: unset DESTDIR to install for real"
    STAGED=1
    START=0
    say "staging into DESTDIR=$DESTDIR: the running system is not touched (no user, no chown, no systemctl)"
elif [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 ...), or set DESTDIR=/some/dir to stage the files"
elif [ ! -d /run/systemd/system ]; then
    die "systemd is not running on this machine (a container?): use docker/run.sh, or DESTDIR=... to stage"
fi
root() { printf '%s%s' "$DESTDIR" "$1"; }

# Commands that change the running system; never run when staged.
system() {
    if [ "$STAGED" = 1 ]; then
        return 0
    fi
    "$@"
}

# -- helpers ----------------------------------------------------------------------------------------------------
check_value() {  # refuse values that would break the env file
    case "$2" in
        *$'\n'*|*\"*|*\\*|*\$*|*\`*) die "$1 value '$2' contains a newline, quote, backslash, \$ or backquote" ;;
    esac
}

set_env() {  # set_env FILE KEY VALUE: replace KEY=... (or a commented '# KEY=...'), else append
    local file=$1 key=$2 value=$3 line tmp
    check_value "$key" "$value"
    case "$value" in *[[:space:]]*) line="$key=\"$value\"" ;; *) line="$key=$value" ;; esac
    tmp=$(mktemp "$file.XXXXXX")
    awk -v key="$key" -v line="$line" '
        BEGIN { done = 0 }
        !done && ($0 ~ "^" key "=" || $0 ~ "^#[ \t]*" key "=") { print line; done = 1; next }
        { print }
        END { if (!done) print line }' "$file" > "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
}

validate_model() {  # prints "name classes contract R"; dies with the checker's message
    local dir=$1
    [ -d "$dir" ] || die "--model-dir $dir: not a folder"
    local f
    for f in model.json labels.txt; do
        [ -f "$dir/$f" ] || die "--model-dir $dir: $f missing (export the model with train_host/export.py)"
    done
    "$CHECK_PYTHON" - "$REPO" "$dir" <<'EOF' || die "--model-dir $dir: not a usable model (see above)"
import os, sys
sys.path.insert(0, sys.argv[1])
try:
    from stetho import ModelCard
    from stetho.errors import StethoError
    from stetho.labels import read_labels
except ImportError as error:
    sys.exit("cannot import the stetho package with %s (%s); on a Nano: sudo apt-get install python3-numpy"
             % (sys.executable, error))
model_dir = sys.argv[2]
try:
    card = ModelCard.load(model_dir)
    card.verify_onnx(model_dir)
    labels = read_labels(os.path.join(model_dir, "labels.txt"))
except StethoError as error:
    sys.exit(str(error))
if labels != list(card.classes):
    sys.exit("%s: labels.txt has %d classes %s but model.json has %d %s; copy the labels.txt exported with "
             "this model" % (model_dir, len(labels), labels, len(card.classes), list(card.classes)))
print("%s %d %s %d" % (card.onnx_file, len(card.classes), card.contract.name, card.resolution))
EOF
}

gpu_nodes() {  # GPU device nodes on this board (under $DESTDIR/dev when staged) that the unit does not list
    local dev node listed
    dev=$(root /dev)
    listed=$(sed -n 's/^DeviceAllow=\(\/dev\/[^ ]*\) .*/\1/p' "$REPO/systemd/$UNIT")
    for node in "$dev"/nvhost-* "$dev"/nvmap "$dev"/nvgpu/*/* "$dev"/nvidia*; do
        [ -e "$node" ] || continue
        [ -d "$node" ] && continue
        node=/dev${node#"$dev"}
        grep -qxF "$node" <<<"$listed" || echo "$node"
    done
}

# -- uninstall --------------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
    if [ "$STAGED" = 0 ] && systemctl cat "$UNIT" >/dev/null 2>&1; then
        say "stopping and disabling $UNIT"
        systemctl disable --now "$UNIT" || true
    fi
    rm -f "$(root "$UNIT_DIR/$UNIT")"
    rm -rf "$(root "$UNIT_DIR/$UNIT.d")"
    rm -f "$(root "$ENV_FILE")"
    rm -rf "$(root "${PREFIX:?}")" "$(root "$PREFIX.new")" "$(root "$PREFIX.old")"
    rm -rf "$(root "${STATE_DIR:?}/models")"
    system systemctl daemon-reload
    system systemctl reset-failed "$UNIT" 2>/dev/null || true
    say "removed the unit, $ENV_FILE, $PREFIX and $STATE_DIR/models"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$(root "${STATE_DIR:?}")" "$(root "${LOG_DIR:?}")"
        if [ "$STAGED" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER" || say "could not remove user $SERVICE_USER (still running processes?)"
        fi
        say "purged recorded data ($STATE_DIR, $LOG_DIR) and the user $SERVICE_USER"
    else
        for kept in "$STATE_DIR" "$LOG_DIR"; do
            [ -e "$(root "$kept")" ] && say "kept recorded data in $kept (remove with --uninstall --purge)"
        done
        [ "$STAGED" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null \
            && say "kept the user $SERVICE_USER, who owns that data"
    fi
    exit 0
fi

# -- install ----------------------------------------------------------------------------------------------------
for f in deploy_jetson/service.py deploy_jetson/status_http.py stetho/__init__.py systemd/$UNIT systemd/stetho.env; do
    [ -f "$REPO/$f" ] || die "$REPO/$f missing: run this from a complete checkout"
done
[ -z "$BACKEND" ] || case "$BACKEND" in auto|tensorrt|jetson|onnxruntime) ;;
    *) die "--backend $BACKEND: use auto, tensorrt, jetson or onnxruntime" ;; esac

MODEL_NAME=""
if [ -n "$MODEL_DIR" ]; then
    MODEL_DIR=$(cd "$MODEL_DIR" 2>/dev/null && pwd) || die "--model-dir: no such folder"
    info=$(validate_model "$MODEL_DIR") || exit 1
    read -r ONNX_FILE N_CLASSES CONTRACT RESOLUTION <<<"$info"
    MODEL_NAME=$(basename "$MODEL_DIR")
    say "model $MODEL_NAME: $N_CLASSES classes, contract $CONTRACT, ${RESOLUTION}x$RESOLUTION ($ONNX_FILE)"
elif [ ! -f "$(root "$ENV_FILE")" ]; then
    die "first install: give --model-dir models/<name> (a folder with resnet18.onnx, labels.txt, model.json)"
fi

# 1. the service user (system account, no login, home = the state dir); device access comes from the unit's
#    SupplementaryGroups=audio video, so the account itself joins no group.
if [ "$STAGED" = 0 ]; then
    for group in audio video; do
        getent group "$group" >/dev/null || groupadd --system "$group"
    done
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
            --comment "stethoscope-nano service" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
fi

# 2. the code, swapped in whole so a running service never sees half an upgrade
new=$(root "$PREFIX.new")
rm -rf "$new"
mkdir -p "$new/docs"
cp -R "$REPO/stetho" "$REPO/deploy_jetson" "$new/"
[ -f "$REPO/docs/deploy.md" ] && cp "$REPO/docs/deploy.md" "$new/docs/"
cp "$REPO/README.md" "$new/"
find "$new" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$new" -type d -exec chmod 0755 {} +
find "$new" -type f -exec chmod 0644 {} +
chmod 0755 "$new/deploy_jetson/service.py"
system chown -R root:root "$new"
mkdir -p "$(dirname "$(root "$PREFIX")")"
rm -rf "$(root "$PREFIX.old")"
[ -d "$(root "$PREFIX")" ] && mv "$(root "$PREFIX")" "$(root "$PREFIX.old")"
mv "$new" "$(root "$PREFIX")"
rm -rf "$(root "$PREFIX.old")"
say "installed the code in $PREFIX"

# 3. state, logs and the model
mkdir -p "$(root "$STATE_DIR/models")" "$(root "$STATE_DIR/runs")" "$(root "$LOG_DIR")"
chmod 0750 "$(root "$STATE_DIR")" "$(root "$LOG_DIR")"
if [ -n "$MODEL_NAME" ]; then
    dest=$(root "$STATE_DIR/models/$MODEL_NAME")
    mkdir -p "$dest"
    # Only what the device needs; checkpoints stay on the workstation.  A cached TensorRT engine already in
    # $dest stays too: the service keys it by the ONNX sha256 and rebuilds it when the model changed.
    for f in "$ONNX_FILE" labels.txt model.json metrics.json report.md; do
        [ -f "$MODEL_DIR/$f" ] && install -m 0644 "$MODEL_DIR/$f" "$dest/$f"
    done
    say "installed the model in $STATE_DIR/models/$MODEL_NAME"
fi
system chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR" "$LOG_DIR"

# 4. settings: the template on first install; afterwards only the values given here are changed
envfile=$(root "$ENV_FILE")
mkdir -p "$(dirname "$envfile")"
if [ ! -f "$envfile" ]; then
    install -m 0644 "$REPO/systemd/stetho.env" "$envfile"
    say "wrote $ENV_FILE"
fi
[ -n "$MODEL_NAME" ] && set_env "$envfile" STETHO_MODEL_DIR "$STATE_DIR/models/$MODEL_NAME"
[ -n "$SOURCE" ] && set_env "$envfile" STETHO_SOURCE "$SOURCE"
[ -n "$HTTP" ] && set_env "$envfile" STETHO_HTTP "$HTTP"
[ -n "$BACKEND" ] && set_env "$envfile" STETHO_BACKEND "$BACKEND"

# 5. the unit, plus a drop-in for GPU nodes of this board that the unit does not name
unitdir=$(root "$UNIT_DIR")
mkdir -p "$unitdir"
install -m 0644 "$REPO/systemd/$UNIT" "$unitdir/$UNIT"
extra=$(gpu_nodes)
if [ -n "$extra" ]; then
    mkdir -p "$unitdir/$UNIT.d"
    {
        echo "# Written by systemd/install.sh: GPU device nodes found on this board (re-run it after a JetPack upgrade)."
        echo "[Service]"
        while IFS= read -r node; do echo "DeviceAllow=$node rw"; done <<<"$extra"
    } > "$unitdir/$UNIT.d/$GPU_DROPIN"
    chmod 0644 "$unitdir/$UNIT.d/$GPU_DROPIN"
    say "allowed $(wc -l <<<"$extra") more GPU device node(s) in $UNIT_DIR/$UNIT.d/$GPU_DROPIN"
else
    rm -f "$unitdir/$UNIT.d/$GPU_DROPIN"
    rmdir "$unitdir/$UNIT.d" 2>/dev/null || true
fi
say "installed $UNIT_DIR/$UNIT"

# 6. enable and (re)start
system systemctl daemon-reload
system systemctl enable "$UNIT"
if [ "$START" = 1 ]; then
    # --no-block: the first start may build a TensorRT engine for minutes (TimeoutStartSec=15min)
    systemctl restart --no-block "$UNIT"
    say "started $UNIT; follow it with: journalctl -u $NAME -f   (status: systemctl status $NAME)"
elif [ "$STAGED" = 0 ]; then
    say "enabled $UNIT (not started: --no-start); start it with: systemctl start $NAME"
fi
http=$(sed -n 's/^STETHO_HTTP=//p' "$envfile" | tr -d '"')
[ -n "$http" ] && say "status page: http://${http/0.0.0.0/<board-address>}/"
say "settings: $ENV_FILE"
