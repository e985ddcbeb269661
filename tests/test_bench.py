"""The throughput harness runs end to end on the tiny shape (a smoke test: CI checks it works, not how fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_throughput_harness_compares_trl_and_align_and_writes_results(tmp_path):
    done = subprocess.run([sys.executable, "bench/throughput.py", "--shape", "tiny", "--rows", "8",
                           "--rollout-batch", "4", "--new-tokens", "4", "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| part | TRL default | best plain TRL | align | align / best TRL |" in done.stdout
    (result,) = tmp_path.glob("*-tiny.json")
    report = json.loads(result.read_text())
    assert set(report["parts"]) == {"sft", "dpo", "rollout"} and report["machine"]
    for name, part in report["parts"].items():
        assert part["speedup"] > 0 and part["trl"]["peak_gib"] > 0 and part["align"]["peak_gib"] > 0, name
    assert {"trl default", "trl packing"} <= set(report["parts"]["sft"])  # align is compared with the best of them
    assert {"trl default", "trl precompute"} <= set(report["parts"]["dpo"])
    for name in ("sft", "dpo"):  # same rows, so the same tokens; both sides trained and got a finite loss
        assert report["parts"][name]["tokens"] > 0
        assert all(0 < report["parts"][name][side]["train_loss"] < 20 for side in ("trl", "align"))
    assert result.with_suffix(".md").read_text().startswith("# ")
