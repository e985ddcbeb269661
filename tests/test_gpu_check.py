"""`make gpu-check`'s script on a CPU (its tiny shapes): every stage runs in 4 bits and the throughput comparison
(bench/throughput.py, run by it) completes, written as one results file; on a GPU the same script measures the real
shapes and targets. A smoke test: CI checks it works, not how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EVERY_STAGE = ["sft", "reward", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo", "eval", "export"]


@pytest.mark.slow
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
    throughput = report["throughput"]["tiny"]
    parts = throughput["parts"]
    assert set(parts) == {"sft", "dpo", "rollout"} and throughput["machine"]
    for name, part in parts.items():
        assert part["speedup"] > 0 and part["trl"]["peak_gib"] > 0 and part["align"]["peak_gib"] > 0, name
    assert {"trl default", "trl packing"} <= set(parts["sft"])  # align is compared with the best of them
    assert {"trl default", "trl precompute"} <= set(parts["dpo"])
    for name in ("sft", "dpo"):  # same rows, so the same tokens; both sides trained and got a finite loss
        assert parts[name]["tokens"] > 0
        assert all(0 < parts[name][side]["train_loss"] < 20 for side in ("trl", "align"))
    assert throughput["markdown"].startswith("# ")
    assert "| part | TRL default | best plain TRL | align | align / best TRL |" in throughput["markdown"]
    # on a CPU the targets are not measured, and the report says so rather than guessing
    assert report["targets"]["sft"] == {"needed": 2.0, "measured": None, "met": None}
    assert "not measured (no GPU)" in done.stdout
    assert report["versions"]["torch"]
