"""bench/service.py on a tiny run: the figures it reports exist, are consistent, and cover the device stack."""
import json
import os
import subprocess
import sys

from test_service_support import REPO


def test_service_bench_reports_overhead_memory_and_speed_on_each_stack(tmp_path):
    out = tmp_path / "service.json"
    done = subprocess.run([sys.executable, "bench/service.py", "--seconds", "6", "--sizes", "32", "--repeat", "1",
                           "--output", str(out)], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    assert done.returncode == 0, done.stdout
    report = json.loads(out.read_text())
    entry = report["sizes"]["32"]
    stacks = [entry] + ([entry["device_stack"]] if "device_stack" in entry else [])
    assert ("device_stack" in entry) == os.path.exists(str(REPO / ".venv-device" / "bin" / "python"))
    for figures in stacks:
        assert figures["windows_per_pass"] == 3                      # 3 s windows every 1.5 s over 6 s
        window, bare = figures["service_window_ms"]["median"], figures["bare_inference_ms"]["median"]
        assert window > bare > 0
        assert abs(figures["overhead_vs_bare_median"] - (window / bare - 1)) < 0.05
        png = figures["latest_png_encode_write_ms"]
        assert png > 0 and abs(figures["overhead_vs_bare_with_latest_png"] - ((window + png) / bare - 1)) < 0.05
        assert {"render", "quality", "tensor", "infer", "overlay", "sinks"} <= set(figures["breakdown_median_ms"])
        assert 50 < figures["peak_rss_mb"] < 1000 and figures["subprocess"]["windows"] == 3
        assert figures["subprocess"]["realtime_x_end_to_end"] > 1
    assert stacks[-1]["stack"]["python"].startswith("3.6." if len(stacks) == 2 else "3.")
    assert "workstation" in done.stdout and "goals: overhead" in done.stdout
