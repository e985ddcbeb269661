"""Parameter sharding: FSDP2 on 2 CPU processes (gloo) trains what DDP trains, saves the gathered adapter, resumes
from sharded checkpoints, and takes a 4-bit base; the launch checks refuse what cannot run sharded (PPO, online
DPO, conflicting settings) before anything loads. accelerate runs FSDP1 and DeepSpeed only on GPUs: those are
checked as configs here, not run (docs/distributed.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from align.config import load_recipe, parse_recipe
from align.sharding import accelerate_config_env, launched_sharding, sharding_problems
from tests.conftest import REPO, tiny_recipe
from tests.test_kto import kto_rows

CONFIGS = REPO / "configs" / "accelerate"
FSDP2_ON_CPU = REPO / "tests" / "fsdp2_cpu.yaml"


def launch(recipe_path: Path, *args: str, fsdp: bool) -> None:
    """`align run` on 2 CPU processes: FSDP2 through tests/fsdp_on_cpu.py, or plain DDP."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if fsdp:
        cmd = [*launcher, "--config_file", str(FSDP2_ON_CPU), str(REPO / "tests" / "fsdp_on_cpu.py")]
    else:
        cmd = [*launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "align"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_LOG_LEVEL": "error", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, "run", str(recipe_path), *args], capture_output=True, text=True, timeout=900,
                          env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def adapter(run: Path, stage: str) -> dict:
    return load_file(run / stage / "adapter" / "adapter_model.safetensors")


def write_recipe(path: Path, model_dir: Path, root: Path, stages: list[str], **sections) -> Path:
    feedback = path.parent / "kto.jsonl"
    feedback.write_text("".join(json.dumps(r) + "\n" for r in kto_rows(4)))
    kto = {"dataset": str(feedback), "max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1,
           "save_steps": 2, "learning_rate": 1e-3, "max_length": 128}
    path.write_text(yaml.safe_dump(tiny_recipe(model_dir, root, stages, **{"kto": kto, **sections})))
    return path


@pytest.mark.multiprocess
def test_fsdp2_on_two_cpu_processes_trains_what_ddp_trains_and_resumes_from_sharded_checkpoints(tiny_llama,
                                                                                                 tmp_path):
    stages = ["sft", "reward", "dpo", "kto"]
    sharded = write_recipe(tmp_path / "fsdp.yaml", tiny_llama, tmp_path / "fsdp", stages)
    replicated = write_recipe(tmp_path / "ddp.yaml", tiny_llama, tmp_path / "ddp", stages)
    launch(sharded, fsdp=True)
    launch(replicated, fsdp=False)

    fsdp_run, ddp_run = tmp_path / "fsdp" / "tiny", tmp_path / "ddp" / "tiny"
    # the trainer really sharded: its checkpoints are per-process shards (DDP writes one ordinary adapter)
    assert (fsdp_run / "sft" / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    assert not (ddp_run / "sft" / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").exists()
    for stage in stages:
        gathered, whole = adapter(fsdp_run, stage), adapter(ddp_run, stage)
        assert gathered.keys() == whole.keys(), stage
        assert any(v.abs().max() > 0 for k, v in gathered.items() if "lora_B" in k), f"{stage} did not train"
        for key in whole:  # the same arithmetic, the same weights
            assert gathered[key].shape == whole[key].shape
            assert (gathered[key] - whole[key]).abs().max() <= 1e-5, f"{stage}: {key}"
    assert "score.weight" in " ".join(adapter(fsdp_run, "reward"))  # the reward head was gathered too

    # interrupted after its step-2 checkpoint: resumes from the shards onto the same weights
    straight = adapter(fsdp_run, "sft")
    for done in ("checkpoints/checkpoint-4", "adapter", "stage.json"):
        path = fsdp_run / "sft" / done
        subprocess.run(["rm", "-rf", str(path)], check=True)
    out = launch(sharded, "--only", "sft", fsdp=True)
    assert "[resume] continuing from checkpoint-2 (step 2)" in out
    resumed = adapter(fsdp_run, "sft")
    assert all((resumed[k] - straight[k]).abs().max() <= 1e-6 for k in straight)


@pytest.mark.multiprocess
def test_fsdp2_shards_a_4bit_base_stored_in_bfloat16_on_two_cpu_processes(tiny_llama, tmp_path):
    recipe = write_recipe(tmp_path / "qlora.yaml", tiny_llama, tmp_path / "runs", ["sft", "reward", "dpo", "export"],
                          model={"name_or_path": str(tiny_llama), "dtype": "bfloat16"},
                          quantization={"load_in_4bit": True})
    launch(recipe, fsdp=True)
    run = tmp_path / "runs" / "tiny"
    for stage in ("sft", "reward", "dpo"):
        weights = adapter(run, stage)
        assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k), f"{stage} did not train"
        # LoRA stays in the model dtype under sharding (FSDP shards a unit in one dtype)
        assert {str(v.dtype) for v in weights.values()} == {"torch.bfloat16"}, stage
    export = json.loads((run / "export" / "stage.json").read_text())["metrics"]
    assert export["merged_from"].endswith("dpo/adapter")


# ------------------------------------------------------------------------------------ launch checks (no launch)

def test_the_shipped_accelerate_configs_read_as_the_launch_they_describe():
    kinds = {path.name: launched_sharding(accelerate_config_env(path)) for path in CONFIGS.glob("*.yaml")}
    assert kinds == {"ddp.yaml": None, "deepspeed_zero2.yaml": None, "deepspeed_zero3_qlora.yaml": "zero3",
                     "fsdp_qlora.yaml": "fsdp", "fsdp1_qlora.yaml": "fsdp"}
    assert accelerate_config_env(CONFIGS / "fsdp_qlora.yaml")["FSDP_VERSION"] == "2"
    # the test launch is the shipped FSDP2 config, on CPU processes
    shipped = yaml.safe_load((CONFIGS / "fsdp_qlora.yaml").read_text())["fsdp_config"]
    assert yaml.safe_load(FSDP2_ON_CPU.read_text())["fsdp_config"].items() <= shipped.items()


def test_the_70b_recipe_runs_under_both_sharded_configs_and_ppo_is_refused_before_anything_loads(tiny_llama,
                                                                                                 tmp_path):
    big = load_recipe(REPO / "recipes" / "gpu" / "llama-3.1-70b-instruct.yaml")
    for config in ("fsdp_qlora.yaml", "deepspeed_zero3_qlora.yaml", "fsdp1_qlora.yaml"):
        assert sharding_problems(big, big.stages, accelerate_config_env(CONFIGS / config)) == [], config

    ppo = {"dataset": {"bundled": "prefs_train", "limit": 4}, "steps": 1}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "online_dpo", "ppo"], ppo=ppo,
                                      online_dpo={"dataset": {"bundled": "sft"}}))
    for config, name in (("fsdp_qlora.yaml", "FSDP2"), ("deepspeed_zero3_qlora.yaml", "DeepSpeed ZeRO-3")):
        problems = sharding_problems(recipe, recipe.stages, accelerate_config_env(CONFIGS / config))
        assert sorted(p.split(":")[0] for p in problems) == ["online_dpo", "ppo"]
        refused_ppo = next(p for p in problems if p.startswith("ppo:"))
        assert f"not under {name}" in refused_ppo and "--from ppo" in refused_ppo
    assert sharding_problems(recipe, recipe.stages, accelerate_config_env(CONFIGS / "ddp.yaml")) == []


def test_settings_that_clash_with_the_sharded_launch_are_named(tiny_llama, tmp_path):
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft"], sft={"activation_checkpointing": True}))
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}
    assert sharding_problems(recipe, ["sft"], env) == [
        "sft.activation_checkpointing: true, and the FSDP config sets fsdp_activation_checkpointing too; "
        "transformers refuses both, keep one"]
    zero3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    assert "zero3_save_16bit_model: true" in sharding_problems(recipe, ["sft"], zero3)[0]
    assert sharding_problems(recipe, ["sft"], {**zero3, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == []


def test_align_validate_checks_a_recipe_against_an_accelerate_config(tmp_path, capsys):
    from align.cli import main

    recipe = str(REPO / "recipes" / "gpu" / "llama-3.1-70b-instruct.yaml")
    assert main(["validate", recipe, "--accelerate-config", str(CONFIGS / "fsdp_qlora.yaml")]) == 0
    assert "(fsdp): every stage can run under it" in capsys.readouterr().out
    assert main(["validate", str(REPO / "recipes" / "chatgpt.yaml"), "--accelerate-config",
                 str(CONFIGS / "deepspeed_zero3_qlora.yaml")]) != 0
    assert "ppo: PPO is align's own loop" in capsys.readouterr().err
    bad = tmp_path / "tpu.yaml"
    bad.write_text("distributed_type: XLA\n")
    assert main(["validate", recipe, "--accelerate-config", str(bad)]) != 0
    assert "distributed_type XLA is not one align runs under" in capsys.readouterr().err


def test_a_sharded_launch_loads_4bit_without_a_device_map(monkeypatch):
    import torch

    from align.config import ModelSection, QuantizationSection
    from align.models import load_kwargs

    four_bit = QuantizationSection(load_in_4bit=True)
    model = ModelSection(name_or_path="embedded", dtype="bfloat16")
    assert "device_map" in load_kwargs(model, four_bit)  # one process or DDP: placed on this process's device
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    kwargs = load_kwargs(model, four_bit)
    assert "device_map" not in kwargs  # FSDP / ZeRO-3 place and shard it themselves
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16  # sharded like the rest
