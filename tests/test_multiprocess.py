"""The stages run unchanged under `accelerate launch` with 2 CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import tiny_recipe


def run_on_two_processes(recipe: dict, tmp_path) -> None:
    """`align run` of `recipe` under accelerate launch with 2 CPU processes; fails the test if it fails."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # accelerate's --cpu means one process; the torchrun launcher (--multi_gpu) falls back to gloo DDP on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "align", "run", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_LOG_LEVEL": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.multiprocess
def test_two_processes_run_sft_reward_dpo_ppo(tiny_llama, tmp_path):
    ppo = {"dataset": {"bundled": "prefs_train", "limit": 16}, "steps": 2, "rollout_batch_size": 2,
           "mini_batch_size": 2, "max_new_tokens": 6, "save_steps": 1}
    run_on_two_processes(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "reward", "dpo", "ppo", "export"], ppo=ppo),
                         tmp_path)

    run = tmp_path / "runs" / "tiny"
    for stage in ("sft", "reward", "dpo", "ppo", "export"):
        assert (run / stage / "stage.json").is_file(), f"{stage} did not finish"
    # 4 steps x 2 rows per process x 2 processes = 16 rows = 2 epochs of the 8 rows; one process would do 1 epoch.
    last = [json.loads(line) for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["epoch"] == pytest.approx(2.0)
    assert json.loads((run / "export" / "stage.json").read_text())["metrics"]["max_logit_diff"] <= 1e-3
    # PPO: both processes sampled their own prompts, saved their RNG in every checkpoint, and stayed in step.
    assert json.loads((run / "ppo" / "stage.json").read_text())["metrics"]["processes"] == 2
    assert sorted(p.name for p in (run / "ppo/checkpoints/step-2").iterdir()) == ["rng-0.pt", "rng-1.pt", "state.pt"]
    assert [r["step"] for r in map(json.loads, (run / "ppo" / "metrics.jsonl").read_text().splitlines())] == [1, 2]


@pytest.mark.multiprocess
def test_two_processes_train_a_reward_model_on_prompt_groups(tiny_llama, tmp_path):
    """reward.group_by_prompt under 2 processes: each holds groups of another size (another number of answers), and
    training and evaluation still gather their figures."""
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    rows = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": f"Answer {i} {j}."}],
             "rejected": [{"role": "assistant", "content": f"No {j}."}]}
            for i, prompt in enumerate(prompts) for j in range(1 + 2 * i)]  # 1, 3, 5 and 7 pairs
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    reward = {"dataset": {"path": str(pairs)}, "group_by_prompt": True, "per_device_train_batch_size": 1,
              "eval_strategy": "steps", "eval_steps": 2}
    run_on_two_processes(tiny_recipe(tiny_llama, tmp_path / "runs", ["reward"], reward=reward), tmp_path)
    stage = tmp_path / "runs" / "tiny" / "reward"
    metrics = json.loads((stage / "stage.json").read_text())["metrics"]
    assert metrics["train_prompt_groups"] == 4 and metrics["train_pairs"] == 16
    logged = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in row for row in logged) and any("accuracy" in row for row in logged)
