"""`make gpu-check`'s script on a CPU (its tiny shapes): every stage runs in 4 bits and the throughput comparison
completes, written as one results file; on a GPU the same script measures the real shapes and targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EVERY_STAGE = ["sft", "reward", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo", "eval", "export"]


def test_gpu_check_runs_every_stage_in_4_bits_and_the_throughput_comparison(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--steps", "2", "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    (path,) = tmp_path.glob("*.json")
    report = json.loads(path.read_text())
    assert done.returncode == 0, report["stages"].get("error", "") + done.stderr[-3000:]
    assert path.name == f"{report['machine'].lower()}-{report['date']}.json"
    assert list(report["stages"]["stages"]) == EVERY_STAGE  # every stage finished, in order
    for stage, record in report["stages"]["stages"].items():
        assert record["seconds"] > 0 and record["resources"]["rss_peak_gib"] > 0, stage
    parts = report["throughput"]["tiny"]["parts"]
    assert set(parts) == {"sft", "dpo", "rollout"} and all(part["speedup"] > 0 for part in parts.values())
    # on a CPU the targets are not measured, and the report says so rather than guessing
    assert report["targets"]["sft"] == {"needed": 2.0, "measured": None, "met": None}
    assert "not measured (no GPU)" in done.stdout
    assert report["versions"]["torch"]
