"""Training health: a loss or gradient norm that stops being a number ends the stage with a clear message and
leaves every checkpoint saved before it in place."""

from __future__ import annotations

import json
import math
import types

import pytest
import yaml

from align.cli import main
from align.runs import is_finished
from align.trainers import TrainingDiverged, metrics_callback
from tests.conftest import tiny_recipe


@pytest.mark.fault("divergence")
def test_a_nan_log_line_stops_the_stage_and_names_the_newest_checkpoint(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    callback = metrics_callback(tmp_path)
    state = types.SimpleNamespace(is_world_process_zero=True, global_step=11, epoch=1.0)
    callback.on_log(None, state, None, logs={"loss": 0.5, "grad_norm": 1.0})  # finite: carries on
    with pytest.raises(TrainingDiverged, match=r"loss = nan at step 11.*newest: .*checkpoint-10"):
        callback.on_log(None, state, None, logs={"loss": math.nan, "grad_norm": 1.0})
    with pytest.raises(TrainingDiverged, match="grad_norm = inf"):
        callback.on_log(None, state, None, logs={"loss": 1.0, "grad_norm": math.inf})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-2",
                                                                            "checkpoint-4"]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3  # the bad lines are logged too


@pytest.mark.fault("divergence")
def test_a_diverging_sft_run_stops_with_a_message_not_a_traceback(tiny_llama, tmp_path, capsys):
    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["sft"],
                         sft={"learning_rate": 1e30, "max_steps": 8, "logging_steps": 1, "save_steps": 2})
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the stage stopped" in err and "Lower the learning rate" in err and "= nan" in err
    assert not is_finished(tmp_path / "runs" / "tiny" / "sft")  # a re-run does not take it for done


@pytest.mark.fault("divergence")
def test_ppo_that_breaks_before_any_checkpoint_fails_without_saving_a_broken_policy(tiny_llama, tmp_path, capsys):
    ppo = {"dataset": {"bundled": "sft", "limit": 16}, "use_reward_model": False,
           "reward_functions": ["tests.toy_rewards:letter_e_fraction"], "steps": 6, "rollout_batch_size": 4,
           "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 4, "save_steps": 2, "learning_rate": 1e30,
           "lr_schedule": "constant"}
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_llama, tmp_path / "runs", ["ppo"], ppo=ppo)))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not finite at step" in err and "no good policy to keep" in err
    stage = tmp_path / "runs" / "tiny" / "ppo"
    assert not is_finished(stage) and not (stage / "adapter").exists()


@pytest.mark.fault("kill -9")
def test_a_checkpoint_cut_off_mid_save_is_set_aside_and_the_previous_one_resumes(tmp_path):
    from align.trainers import last_checkpoint

    root = tmp_path / "checkpoints"
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st'), (8, None)):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (root / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in range(1, 9)))
    assert last_checkpoint(tmp_path) == str(root / "checkpoint-4")
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    names = sorted(p.name for p in root.iterdir())
    assert names[:2] == ["checkpoint-2", "checkpoint-4"] and len(names) == 4  # nothing deleted
    assert all(n.startswith("incomplete-checkpoint-") for n in names[2:])
    assert last_checkpoint(tmp_path / "none") is None


@pytest.mark.slow
@pytest.mark.fault("kill -9")
@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_a_stage_killed_with_sigkill_resumes_on_the_same_losses(stage, tiny_llama, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    def recipe(root):
        settings = {"max_steps": 8, "save_steps": 4, "logging_steps": 1, "learning_rate": 5e-4}
        path = root.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(tiny_recipe(tiny_llama, root, [stage], **{stage: settings})))
        return path

    def losses(root):
        rows = [json.loads(line) for line in (root / "tiny" / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss" in r]
        assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    assert main(["run", str(recipe(tmp_path / "straight"))]) == 0
    killed = recipe(tmp_path / "killed")
    process = subprocess.Popen([sys.executable, "-m", "align", "run", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "tiny" / stage / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    def saved() -> bool:  # the trainer writes trainer_state.json last, and not atomically
        try:
            return json.loads(state.read_text())["global_step"] == 4
        except (OSError, ValueError):
            return False

    deadline = time.time() + 300
    while not saved() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert saved(), "the run should have been killed after its step-4 checkpoint"
    assert not is_finished(tmp_path / "killed" / "tiny" / stage)
    capsys.readouterr()
    assert main(["run", str(killed)]) == 0
    assert "[resume] continuing from checkpoint-4 (step 4)" in capsys.readouterr().out  # resumed, not restarted
    assert not list((tmp_path / "killed" / "tiny" / stage / "checkpoints").glob("incomplete-*"))
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert sorted(resumed) == sorted(straight) == list(range(1, 9))
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4), f"{stage} step {step}"


@pytest.mark.fault("divergence")
def test_ppo_running_away_from_the_reference_stops_at_max_kl_and_keeps_the_last_checkpoint(tiny_llama, tmp_path,
                                                                                           capsys):
    ppo = {"dataset": {"bundled": "sft", "limit": 16}, "use_reward_model": False,
           "reward_functions": ["tests.toy_rewards:letter_e_fraction"], "steps": 30, "rollout_batch_size": 4,
           "mini_batch_size": 4, "max_new_tokens": 6, "save_steps": 2, "learning_rate": 5e-3, "kl_coef": 0.0,
           "max_kl": 0.5, "lr_schedule": "constant"}
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_llama, tmp_path / "runs", ["ppo"], ppo=ppo)))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    stage = tmp_path / "runs" / "tiny" / "ppo"
    record = json.loads((stage / "stage.json").read_text())
    stopped = record["metrics"]["stopped_early"]
    assert "exceeded ppo.max_kl=0.5" in stopped and "stopped early: KL" in out
    stop_step = int(stopped.rsplit(" ", 1)[1])
    logged = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == stop_step < 30 and logged[-1]["kl"] > 0.5
    assert all(row["kl"] <= 0.5 for row in logged[:-1])
    kept = record["metrics"]["steps"]
    assert kept == (stop_step - 1) // 2 * 2 and f"keeping the policy of {stage / 'checkpoints'}" in out
    assert (stage / "adapter" / "adapter_model.safetensors").is_file()
