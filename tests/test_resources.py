"""Memory that does not pile up across stages: each stage records its wall time and peak memory in stage.json,
nothing a stage loaded outlives it, and a later stage starts from the memory the one before it started from."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.config import parse_recipe
from align.pipeline import run_recipe
from align.child_processes import StageProcessDied, in_child_process
from align.resources import StageResources, rss_bytes
from align.run_lock import LOCK_FILE
from tests.conftest import tiny_recipe

REPO = Path(__file__).resolve().parent.parent

# The first stage pays for importing trl, datasets and their kernels; later stages may add caches of a few MB
# (measured on this recipe: at most 0.04 GiB above the second stage's start with memory released between stages).
BASELINE_MARGIN_GIB = 0.1


def live_models() -> list:
    from transformers import PreTrainedModel, Trainer

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, (PreTrainedModel, Trainer))]


def test_stages_record_their_peak_memory_and_give_it_back(tiny_llama, tmp_path):
    before = len(live_models())
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "reward", "dpo", "eval", "export"]))
    records = run_recipe(recipe)
    for stage, record in records.items():
        usage = record["resources"]
        assert 0 < usage["rss_start_gib"] <= usage["rss_peak_gib"] and usage["seconds"] > 0, stage
        assert usage["rss_end_gib"] <= usage["rss_peak_gib"], stage
    assert len(live_models()) == before, "a stage's model, reference or trainer outlived it"
    starts = {stage: record["resources"]["rss_start_gib"] for stage, record in records.items()}
    for stage in ("dpo", "eval", "export"):  # after the first two stages warmed the imports
        assert starts[stage] - starts["reward"] < BASELINE_MARGIN_GIB, starts
    summary = (tmp_path / "runs" / "tiny" / "report.html").read_text()
    assert "peak memory (GiB)" in summary


def test_the_sampler_sees_a_peak_between_its_ends():
    # Anonymous mmap, not a bytearray: malloc may serve 300 MiB from a hole an earlier test left in the heap, and
    # freeing it there does not give the pages back, so the end would read as high as the peak.
    import mmap

    with StageResources() as usage:
        block = mmap.mmap(-1, 300 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):  # touch every page so it counts as resident
            block[offset] = 1
        time.sleep(0.3)
        block.close()  # munmap: the pages leave the process now
    record = usage.record()
    assert record["rss_peak_gib"] - max(record["rss_start_gib"], record["rss_end_gib"]) > 0.2, record
    assert rss_bytes() > 0


@pytest.mark.slow
def test_stages_in_child_processes_leave_the_parent_as_it_was(tiny_llama, tmp_path):
    recipe = parse_recipe({**tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "dpo", "export"]),
                           "isolate_stages": True})
    run_recipe(parse_recipe({**recipe.model_dump(), "name": "warm", "stages": ["sft"]}))  # imports and kernels
    gc.collect()
    before, models = rss_bytes(), len(live_models())
    records = run_recipe(recipe)
    assert len(live_models()) == models, "a stage ran in this process"
    assert (rss_bytes() - before) / 2**30 < BASELINE_MARGIN_GIB
    for stage, record in records.items():
        assert 0 < record["resources"]["rss_start_gib"] <= record["resources"]["rss_peak_gib"], stage
    assert records["export"]["metrics"]["max_logit_diff"] <= 1e-3
    events = list((tmp_path / "runs" / "tiny").glob("*/tensorboard/**/events.out.tfevents.*"))
    writers = {name.name.split(".")[-2] for name in events}  # TensorBoard names its files <host>.<pid>.<n>
    assert {"sft", "dpo"} <= {event.relative_to(tmp_path / "runs" / "tiny").parts[0] for event in events}
    assert str(os.getpid()) not in writers and len(writers) == 2, "sft and dpo trained in their own processes"
    assert not [pid for pid in children(os.getpid()) if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()], \
        "the fork server outlived the run"


def test_a_stage_process_writes_to_the_same_terminal(tiny_llama, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe(tiny_llama, tmp_path / "runs", ["sft"], sft={"max_steps": 2}),
                                    "isolate_stages": True}))
    run = subprocess.run([sys.executable, "-m", "align", "run", str(path)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    child = next(i for i, line in enumerate(lines) if line.startswith("[sft] 8 demonstrations"))
    assert lines.index(f"[sft] starting -> {tmp_path / 'runs' / 'tiny' / 'sft'}") < child
    assert child < next(i for i, line in enumerate(lines) if line.startswith("[sft] done in"))
    assert "Traceback" not in run.stderr and "gemm_4bit" not in run.stderr  # the libraries stay as quiet as here


def raise_full_disk(path: str) -> None:
    try:
        raise OSError(errno.ENOSPC, "No space left on device", path)
    except OSError as err:
        raise RuntimeError("saving the adapter failed") from err


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_stage_process_error_arrives_as_itself_with_its_cause_and_traceback():
    with pytest.raises(RuntimeError, match="saving the adapter failed") as caught:
        in_child_process(raise_full_disk, "/runs/x/sft/adapter.tmp")
    cause = caught.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC and cause.filename == "/runs/x/sft/adapter.tmp"
    assert "raise_full_disk" in "".join(caught.value.__notes__)  # where in the child it was raised
    with pytest.raises(StageProcessDied, match="its process was killed by SIGKILL"):
        in_child_process(kill_myself)
    assert in_child_process(sorted, [3, 1, 2]) == [1, 2, 3]


def start_training_run(model_dir, tmp_path, stderr) -> tuple[subprocess.Popen, Path]:
    """`align run` of a long SFT stage in its own process, returned once the stage is training; and its metrics."""
    recipe = tiny_recipe(model_dir, tmp_path / "runs", ["sft"], sft={"max_steps": 10_000, "save_steps": 10_000})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, "isolate_stages": True}))
    run = subprocess.Popen([sys.executable, "-m", "align", "run", str(path)], stdout=subprocess.DEVNULL,
                           stderr=stderr, text=True)
    metrics = tmp_path / "runs" / "tiny" / "sft" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.stat().st_size) and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, "the run should still be training"
    return run, metrics


@pytest.mark.fault("kill -9")
def test_killing_the_run_kills_its_stage_process_and_frees_the_run(tiny_llama, tmp_path):
    run, metrics = start_training_run(tiny_llama, tmp_path, stderr=subprocess.DEVNULL)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()

    import fcntl

    def lock_is_free() -> bool:
        with open(tmp_path / "runs" / "tiny" / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

    deadline = time.time() + 10
    while not lock_is_free() and time.time() < deadline:  # the stage's process holds it too, until it is killed
        time.sleep(0.1)
    assert lock_is_free(), "the stage's process outlived the run and holds its lock"
    logged = metrics.stat().st_size
    time.sleep(3)
    assert metrics.stat().st_size == logged, "the stage's process outlived the run and is still training"



WATCHER = """
import os, select, sys, time
from align import child_processes
if sys.argv[1] == "sandbox":  # what a sandboxing kernel may answer: the caller's pidfd readable at once
    select.select = lambda readers, *rest: (readers, [], [])
child_processes._die_with(int(sys.argv[2]))
time.sleep(3)
print("outlived", flush=True)
"""


@pytest.mark.fault("a sandbox's pidfd")
def test_a_stage_process_lives_while_its_caller_does_even_where_pidfd_says_otherwise():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for kernel in ("linux", "sandbox"):
            done = subprocess.run([sys.executable, "-c", WATCHER, kernel, str(sleeper.pid)], cwd=REPO,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "outlived" in done.stdout, (kernel, done.returncode, done.stderr[-2000:])
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, "sandbox", str(sleeper.pid)], cwd=REPO,
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        sleeper.kill()  # its caller gone: it dies within about a second, without finishing
        sleeper.wait()
        assert watcher.wait(timeout=30) == -signal.SIGKILL and watcher.stdout.read() == ""
    finally:
        sleeper.kill()


def children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def forked_children(pid: int) -> list[int]:
    """Its children running its own command line: `align run`'s stage processes."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [child for child in children(pid) if Path(f"/proc/{child}/cmdline").read_bytes() == command]


@pytest.mark.fault("kill -9")
def test_a_stage_process_killed_by_the_system_stops_the_run_with_a_clear_error(tiny_llama, tmp_path):
    run, _ = start_training_run(tiny_llama, tmp_path, stderr=subprocess.PIPE)
    stages = forked_children(run.pid)  # align run computes nothing itself, so it forks its stages
    assert len(stages) == 1, f"one stage process forked from align run expected, found {stages}"
    os.kill(stages[0], signal.SIGKILL)  # what the out-of-memory killer does
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "align run: error: stage 'sft': its process was killed by SIGKILL" in err
    assert "run the same command again" in err


FORK_RULE = """
import os, threading, time
import torch
from align.child_processes import allow_forking, in_child_process
allow_forking()
thread = threading.Thread(target=lambda: None)  # a thread that has ended holds nothing a child could miss
thread.start()
thread.join()
time.sleep(0.5)  # the system thread outlives join() by a moment
print("forked" if in_child_process(os.getppid) == os.getpid() else "fork server")
torch.randn(1024, 1024) @ torch.randn(1024, 1024)  # torch starts its OpenMP worker threads
print("forked" if in_child_process(os.getppid) == os.getpid() else "fork server")
print(in_child_process(torch.get_num_threads) >= 1)  # the child computes without hanging
"""


def test_stages_are_forked_until_torch_computes_in_the_parent_then_come_from_a_fork_server():
    # with two threads torch starts its OpenMP pool when it computes (on one, as under `make test`'s workers, it
    # has none, and forking stays safe)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", FORK_RULE], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["forked", "fork", "server", "True"]


def test_align_run_called_from_a_program_that_has_computed_does_not_fork_from_it(tiny_llama, tmp_path):
    import torch

    torch.randn(1024, 1024) @ torch.randn(1024, 1024)  # this process now has torch's OpenMP threads
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe(tiny_llama, tmp_path / "runs", ["sft"], sft={"max_steps": 2}),
                                    "isolate_stages": True}))
    assert main(["run", str(path)]) == 0  # a child forked from here would hang in its first parallel region
    assert (tmp_path / "runs" / "tiny" / "sft" / "stage.json").is_file()


def test_the_heap_is_trimmed_during_training_on_a_cpu_only(monkeypatch):
    from types import SimpleNamespace

    import torch

    import align.resources as resources

    trims = []
    monkeypatch.setattr(resources, "trim_allocator", lambda: trims.append(1))
    callback = resources.trim_callback()
    for device in ("cpu", "cuda"):
        args = SimpleNamespace(device=torch.device(device))
        for step in range(1, 3 * resources.TRIM_EVERY_STEPS + 1):
            callback.on_step_end(args, SimpleNamespace(global_step=step), None)
        assert len(trims) == 3, device  # three times on the CPU, never more on the GPU
