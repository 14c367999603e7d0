#!/usr/bin/env bash
# Install stethoscope-nano as a system service (Jetson Nano with JetPack 4.6, or any systemd Linux).
#
#   sudo systemd/install.sh --model-dir models/heart          install or upgrade, enable and (re)start
#   sudo systemd/install.sh --model-dir models/heart --source mic:USB --http 0.0.0.0:8080 --generate-http-token
#   sudo systemd/install.sh --http 192.168.1.20:8080 --http-token-file token.txt    (an upgrade: settings only)
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
#   /etc/stetho/http-token               the status page's access token (0640 root:stetho), when given
#   /etc/systemd/system/stetho.service   the unit; stetho.service.d/50-gpu-devices.conf when this board has
#                                        GPU device nodes the unit does not list (Orin, dGPU)
# Running it again with the same arguments changes nothing (idempotent).  Every argument, and the model, is
# checked before anything is written: --source mic[:NAME]|file:/PATH|stdin, --http HOST:PORT (port 1-65535),
# --backend auto|tensorrt|jetson|onnxruntime.  A status page on a non-loopback address gets a warning unless a
# token is set (--http-token-file FILE copies one line from FILE; --generate-http-token makes a new one, each run).
set -euo pipefail

NAME=stetho
SERVICE_USER=stetho
PREFIX=/opt/stetho
STATE_DIR=/var/lib/stetho
LOG_DIR=/var/log/stetho
ENV_FILE=/etc/default/stetho
TOKEN_DIR=/etc/stetho
TOKEN_FILE=$TOKEN_DIR/http-token
UNIT_DIR=/etc/systemd/system
UNIT=$NAME.service
GPU_DROPIN=50-gpu-devices.conf
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK_PYTHON=${CHECK_PYTHON:-python3}   # validates the model with the repo's own code (needs numpy)

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
say() { echo "[$NAME] $*"; }
die() { echo "[$NAME] error: $*" >&2; exit 1; }
warn() { echo "[$NAME] WARNING: $*" >&2; }

MODEL_DIR="" SOURCE="" HTTP="" BACKEND="" START=1 UNINSTALL=0 PURGE=0 TOKEN_FROM="" NEW_TOKEN=0
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
        --http-token-file) TOKEN_FROM=${2:?--http-token-file needs a file}; shift 2 ;;
        --http-token-file=*) TOKEN_FROM=${1#*=}; shift ;;
        --generate-http-token) NEW_TOKEN=1; shift ;;
        --no-start) START=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "[$NAME] unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge only goes with --uninstall"
if [ "$UNINSTALL" = 1 ] && [ -n "$MODEL_DIR$SOURCE$HTTP$BACKEND$TOKEN_FROM${NEW_TOKEN#0}" ]; then
    die "--uninstall takes no --model-dir, --source, --http, --backend or token option"
fi
[ -n "$TOKEN_FROM" ] && [ "$NEW_TOKEN" = 1 ] && die "give --http-token-file or --generate-http-token, not both"

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

plain_name() {  # a file or folder name without a folder part, '..', leading dot, space or shell character
    [[ "$1" =~ ^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$ ]]
}

validate_source() {  # the service's mic[:NAME_OR_INDEX] | file:PATH | stdin, as the unit can use them
    check_value --source "$1"
    case "$1" in
        mic|mic:?*) ;;
        file:/?*) ;;
        file:*) die "--source $1: file:PATH needs an absolute path (the service runs in $STATE_DIR, and cannot \
read /home or /root)" ;;
        stdin) warn "--source stdin: under systemd the service's standard input is /dev/null, so it reads nothing \
unless a drop-in sets StandardInput= (e.g. a socket); stdin is meant for pipes run by hand" ;;
        *) die "--source $1: use mic, mic:NAME_OR_INDEX, file:/PATH or stdin" ;;
    esac
}

validate_http() {  # HOST:PORT with a port 1-65535 (host: a name, an IPv4 or IPv6 address, [IPv6])
    check_value --http "$1"
    local host=${1%:*} port=${1##*:}
    [[ "$1" == *:* && "$port" =~ ^[0-9]{1,5}$ ]] && [ "$((10#$port))" -ge 1 ] && [ "$((10#$port))" -le 65535 ] \
        || die "--http $1: expected HOST:PORT with a port 1-65535 (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)"
    [[ "$host" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.:-]*)$ ]] \
        || die "--http $1: '$host' is not a host name or address"
}

is_loopback() {  # HOST:PORT on this machine only ('' is the service's 127.0.0.1)
    case "${1%:*}" in ""|localhost|127.*|::1|"[::1]") return 0 ;; esac
    return 1
}

read_token() {  # the token in file $1 (one line of 16-4096 URL-safe characters); never printed
    local token
    [ -f "$1" ] && [ -r "$1" ] || die "--http-token-file $1: not a readable file"
    token=$(head -c 4097 "$1" | tr -d '\r\n')
    [ "$(wc -l < "$1")" -le 1 ] || die "--http-token-file $1: holds more than one line"
    [[ "$token" =~ ^[A-Za-z0-9._~+/=-]{16,4096}$ ]] \
        || die "--http-token-file $1: the token must be one line of 16-4096 letters, digits or ._~+/=- (no spaces)"
    printf '%s' "$token"
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
print("%s\t%d\t%s\t%d" % (card.onnx_file, len(card.classes), card.contract.name, card.resolution))
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
    rm -rf "$(root "$TOKEN_DIR")"
    rm -rf "$(root "${PREFIX:?}")" "$(root "$PREFIX.new")" "$(root "$PREFIX.old")"
    rm -rf "$(root "${STATE_DIR:?}/models")"
    system systemctl daemon-reload
    system systemctl reset-failed "$UNIT" 2>/dev/null || true
    say "removed the unit, $ENV_FILE, $TOKEN_DIR, $PREFIX and $STATE_DIR/models"
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
# Every argument and the model are checked here, before anything is written.
[ -z "$BACKEND" ] || case "$BACKEND" in auto|tensorrt|jetson|onnxruntime) ;;
    *) die "--backend $BACKEND: use auto, tensorrt, jetson or onnxruntime" ;; esac
[ -z "$SOURCE" ] || validate_source "$SOURCE"
[ -z "$HTTP" ] || validate_http "$HTTP"
TOKEN=""
if [ -n "$TOKEN_FROM" ]; then
    TOKEN=$(read_token "$TOKEN_FROM") || exit 1
elif [ "$NEW_TOKEN" = 1 ]; then
    TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')   # 256 random bits as 64 hex digits
fi

MODEL_NAME=""
if [ -n "$MODEL_DIR" ]; then
    MODEL_DIR=$(cd "$MODEL_DIR" 2>/dev/null && pwd) || die "--model-dir $MODEL_DIR: no such folder"
    MODEL_NAME=$(basename "$MODEL_DIR")
    plain_name "$MODEL_NAME" || die "--model-dir $MODEL_DIR: the folder name '$MODEL_NAME' becomes \
$STATE_DIR/models/$MODEL_NAME; use letters, digits and ._+- only (rename the folder)"
    info=$(validate_model "$MODEL_DIR") || exit 1
    IFS=$'\t' read -r ONNX_FILE N_CLASSES CONTRACT RESOLUTION <<<"$info"
    # model.json's onnx_file is checked by the model card too; the installer runs as root, so again here
    plain_name "$ONNX_FILE" && [[ "$ONNX_FILE" == *.onnx ]] || die "--model-dir $MODEL_DIR: model.json names \
onnx_file '$ONNX_FILE', which is not a plain .onnx file name in the model folder: refused"
    for f in "$ONNX_FILE" labels.txt model.json metrics.json report.md; do
        [ ! -L "$MODEL_DIR/$f" ] || die "--model-dir $MODEL_DIR: $f is a symbolic link; copy the file itself \
(the installer runs as root and copies only the model's own files)"
    done
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
if [ -n "$TOKEN" ]; then
    # a file only the service's group can read: the env file is world-readable (0644)
    tokdir=$(root "$TOKEN_DIR")
    mkdir -p "$tokdir"
    chmod 0750 "$tokdir"
    system chown "root:$SERVICE_USER" "$tokdir"
    tmp=$(mktemp "$tokdir/.http-token.XXXXXX")
    printf '%s\n' "$TOKEN" > "$tmp"
    chmod 0640 "$tmp"
    system chown "root:$SERVICE_USER" "$tmp"
    mv -f "$tmp" "$tokdir/http-token"
    set_env "$envfile" STETHO_HTTP_TOKEN_FILE "$TOKEN_FILE"
    say "wrote the status page's token to $TOKEN_FILE (0640 root:$SERVICE_USER; read it with: sudo cat $TOKEN_FILE)"
fi

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
if [ -n "$http" ]; then
    say "status page: http://${http/0.0.0.0/<board-address>}/"
    if ! is_loopback "$http" && ! grep -qE '^STETHO_HTTP_TOKEN(_FILE)?=[^[:space:]]' "$envfile"; then
        warn "the status page listens on $http without a token: anyone on the local network can read the live \
results; add --generate-http-token (or --http-token-file FILE), or bind 127.0.0.1"
    fi
fi
if grep -qE '^STETHO_HTTP_TOKEN=[^[:space:]]' "$envfile"; then
    warn "$ENV_FILE sets STETHO_HTTP_TOKEN, readable by every user (0644): move it to a file with \
--http-token-file FILE (installed as $TOKEN_FILE, 0640 root:$SERVICE_USER) and delete that line"
fi
say "settings: $ENV_FILE"
