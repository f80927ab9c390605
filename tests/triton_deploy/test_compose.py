"""docker-compose.yml and the Dockerfile, checked without a Docker engine (Debian's docker-compose)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "--profile", "bench", "config"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_triton_service(compose):
    t = compose["services"]["triton"]
    ports = [p if isinstance(p, dict) else dict(zip(("host_ip", "published", "target"), str(p).split("/")[0].split(":")))
             for p in t["ports"]]
    assert sorted(int(p["target"]) for p in ports) == [8000, 8001, 8002]
    assert all(p.get("host_ip") == "127.0.0.1" for p in ports), ports          # published on the host's loopback only
    assert t["shm_size"] and t["ulimits"]["memlock"] == -1 and t["ulimits"]["stack"] == 67108864
    (dev,) = t["deploy"]["resources"]["reservations"]["devices"]
    assert dev["capabilities"] == ["gpu"] and dev["device_ids"] == ["0", "1"]
    cmd = " ".join(t["command"]) if isinstance(t["command"], list) else t["command"]
    assert "--target-gpu 0" in cmd and "--draft-gpu 1" in cmd
    assert "model-control" not in cmd and "--host" not in cmd     # the image's entrypoint sets --host 0.0.0.0 only
    check = " ".join(t["healthcheck"]["test"])
    assert "curl -f" in check and "/v2/health/ready" in check and "grep" not in check   # status code, not body
    assert t["restart"] == "unless-stopped"       # specdec serve exits on a dead stub; the service comes back


def test_bench_profile_runs_perf_analyzer_from_the_sdk_image(compose):
    b = compose["services"]["bench"]
    assert b["profiles"] == ["bench"] and re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3-sdk", b["image"])
    assert b["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "perf_sweep.py" in b["command"] if isinstance(b["command"], str) else "perf_sweep.py" in " ".join(b["command"])


def test_mounted_paths_exist(compose):
    mounts = [v for s in compose["services"].values() for v in s.get("volumes", [])]
    assert mounts
    for v in mounts:
        source = v["source"] if isinstance(v, dict) else v.split(":")[0]
        assert Path(source).exists(), f"{source} (mounted by docker-compose.yml) does not exist"
    assert any(str(ROOT / "model_repository") == (v["source"] if isinstance(v, dict) else v.split(":")[0]) for v in mounts)


def test_dockerfile_base_image_and_python():
    text = (ROOT / "Dockerfile").read_text()
    tag = re.search(r"ARG TRITON_TAG=(\d\d)\.(\d\d)", text)
    assert tag and (int(tag.group(1)), int(tag.group(2))) >= (24, 11)      # Python 3.12 images
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3" in text
    for needle in ("torch==", 'pip install -e ".[serve', "echo ,flash", "specdec"):
        assert needle in text
    # the flash extra is flash-attn-4 (the CuTe DSL package layers/flash_attention.py imports), not flash-attn 2
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("flash-attn-4") for d in extras["flash"])


def test_generated_repository_pins_the_gpus_that_compose_reserves(compose, tmp_path):
    """The service's command, parsed by `specdec serve`'s own parser, generates config.pbtxt files whose
    instance groups name the GPUs that the compose file reserves (target on the first, draft on the second)."""
    import argparse
    import shlex

    from specdec.commands import serve
    from specdec.triton.repository import read_config, write_repository

    t = compose["services"]["triton"]
    cmd = t["command"] if isinstance(t["command"], list) else shlex.split(t["command"])
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *cmd])
    reserved = [int(d) for d in t["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]]
    assert [args.target_gpu, args.draft_gpu] == reserved

    settings = serve.settings_from_args(args, cuda=True)
    repo = write_repository(tmp_path / "repo", settings, target_gpu=args.target_gpu, draft_gpu=args.draft_gpu)
    placed = {}
    for name in ("target", "draft"):
        (group,) = read_config(repo / name / "config.pbtxt").instance_group
        assert group.kind == group.KIND_GPU and group.count == 1
        placed[name] = list(group.gpus)
    assert placed == {"target": [reserved[0]], "draft": [reserved[1]]}
    assert read_config(repo / "target" / "config.pbtxt").parameters["draft_location"].string_value == "separate"
