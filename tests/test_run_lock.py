"""One writer per run directory: a second `align run` on a directory in use is refused at once, naming the
holder; a lock left by a killed run is taken over, and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from align.cli import main
from align.run_lock import RunLocked, run_lock
from tests.conftest import tiny_recipe


@pytest.mark.fault("concurrent run")
def test_a_second_holder_is_refused_with_the_holders_pid(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLocked, match=f"being written by another pid {os.getpid()} on .* `align run`"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released on exit: the next run takes it without a word about a holder
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    assert (tmp_path / "run" / ".lock").read_text() == ""


@pytest.mark.fault("concurrent run")
def test_two_align_runs_on_one_directory_and_a_killed_holder(tiny_llama, tmp_path, capsys):
    long_sft = {"max_steps": 100000, "save_steps": 100000}  # runs until it is killed
    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["sft"], sft=long_sft)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    lock = tmp_path / "runs" / "tiny" / ".lock"
    first = subprocess.Popen([sys.executable, "-m", "align", "run", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"is being written by another pid {first.pid}" in err and "Wait for it to finish" in err
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid  # the killed run's record is still there

    assert main(["run", str(path), "sft.max_steps=2", "sft.save_steps=2", "--from", "sft"]) == 0
    assert f"taking over the lock of pid {first.pid}" in capsys.readouterr().out
    assert (tmp_path / "runs" / "tiny" / "sft" / "stage.json").is_file()


@pytest.mark.slow
@pytest.mark.fault("kill -9")
def test_an_export_killed_mid_merge_is_set_aside_and_redone(tiny_llama, tmp_path):
    export = {"check_prompts": [f"Question number {i}?" for i in range(12)], "check_new_tokens": 64}
    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "export"], export=export)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "runs" / "tiny" / "export"
    run = subprocess.Popen([sys.executable, "-m", "align", "run", str(path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob(".model.tmp-*/model.safetensors")):  # the merged weights are being written or checked
        assert run.poll() is None and time.time() < deadline, "the export finished before it could be killed"
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not (out / "stage.json").exists()

    assert main(["run", str(path)]) == 0
    [aside] = out.glob("model.tmp-*.unfinished-*")
    assert (aside / "model.safetensors").exists() and (out / "stage.json").is_file()
    assert json.loads((out / "stage.json").read_text())["metrics"]["max_logit_diff"] <= 1e-3
    assert not list(out.glob(".model.tmp-*")), "only the finished export is in place"
