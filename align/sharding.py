"""Parameter sharding (FSDP, DeepSpeed ZeRO-3) as `accelerate launch` sets it up: which kind is on, the stages and
recipe settings it rules out (checked before anything loads), and gathering the trained adapter for saving.

accelerate tells every process what it launched through environment variables; reading them here lets the checks
run at load time, long before a trainer builds its Accelerator. Plain DDP and ZeRO-1/2 keep whole parameters on
every process: nothing here applies to them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

FSDP, ZERO3 = "fsdp", "zero3"

# Stages that run models outside a trl trainer on every process, which sharding would need to wrap themselves.
# PPO keeps four adapters on one base and averages gradients with its own all-reduce (align/stages/ppo/ranks.py);
# online_dpo samples each round's answers with a whole sampler model on every process.
NOT_SHARDED = {
    "ppo": "PPO is align's own loop and runs under DDP only (every process holds the whole 4-bit base)",
    "online_dpo": "online_dpo samples every round with a whole model on each process",
}


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true", "yes")


def launched_sharding(env: Mapping[str, str] | None = None) -> str | None:
    """'fsdp' or 'zero3' when this process was started by `accelerate launch` with a config that shards the
    parameters (or `env` describes such a launch); None for one process, DDP and ZeRO-1/2."""
    env = os.environ if env is None else env
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return FSDP
    if _flag(env, "ACCELERATE_USE_DEEPSPEED") and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return ZERO3
    return None


def accelerate_config_env(path: str | Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file path` gives each process, as far as these checks read it,
    so `align validate --accelerate-config` can check a launch before any GPU is involved."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--accelerate-config {path}: cannot read it: {err}") from None
    env: dict[str, str] = {}
    kind = config.get("distributed_type")
    if kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION=str(fsdp.get("fsdp_version", 1)),
                   FSDP_ACTIVATION_CHECKPOINTING=str(fsdp.get("fsdp_activation_checkpointing", False)).lower())
    elif kind == "DEEPSPEED":
        deepspeed = config.get("deepspeed_config") or {}
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=str(deepspeed.get("zero_stage", "")),
                   ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL=str(
                       deepspeed.get("zero3_save_16bit_model", False)).lower())
    elif kind not in ("MULTI_GPU", "MULTI_CPU", "NO", None):
        raise ValueError(f"--accelerate-config {path}: distributed_type {kind} is not one align runs under "
                         f"(MULTI_GPU, FSDP or DEEPSPEED)")
    return env


def sharding_problems(recipe, stages: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """What in this recipe cannot run under the launch `env` describes (this process's by default), one line
    each; empty when everything can."""
    env = os.environ if env is None else env
    sharding = launched_sharding(env)
    if sharding is None:
        return []
    name = {FSDP: f"FSDP{env.get('FSDP_VERSION', '1')}", ZERO3: "DeepSpeed ZeRO-3"}[sharding]
    problems = [f"{stage}: {why}, not under {name}; run it in a second command without sharding, e.g. "
                f"`accelerate launch --config_file configs/accelerate/ddp.yaml -m align run RECIPE --from {stage}`"
                for stage, why in NOT_SHARDED.items() if stage in stages]
    if sharding == FSDP and _flag(env, "FSDP_ACTIVATION_CHECKPOINTING"):
        for stage in stages:
            if getattr(getattr(recipe, stage, None), "activation_checkpointing", False):
                problems.append(f"{stage}.activation_checkpointing: true, and the FSDP config sets "
                                f"fsdp_activation_checkpointing too; transformers refuses both, keep one")
    if sharding == ZERO3 and not _flag(env, "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"):
        problems.append("the DeepSpeed ZeRO-3 config needs zero3_save_16bit_model: true, or the adapters could only "
                        "be saved as ZeRO shards that export cannot merge")
    return problems


def gathered_trainable_state(trainer) -> dict | None:
    """The whole trained weights of a sharded model as plain CPU tensors, gathered on every process (a collective
    call: every process must make it); None when nothing is sharded and the model can save itself.

    FSDP2 keeps each parameter as a DTensor shard: only the trainable ones (the adapter, a reward model's score
    head) are gathered, so a 70B base is never assembled. FSDP1 and ZeRO-3 flatten or partition parameters, so
    accelerate's own full gather is used, as the Trainer does when it saves.
    """
    from torch.distributed.tensor import DTensor

    model = trainer.model
    unwrapped = trainer.accelerator.unwrap_model(model)
    trainable = [(name, p) for name, p in unwrapped.named_parameters() if p.requires_grad]
    if any(isinstance(p, DTensor) for _, p in trainable):
        return {name: _full(p) for name, p in trainable}
    if launched_sharding() is not None:
        return trainer.accelerator.get_state_dict(model)
    return None


def _full(parameter):
    """A whole copy of an FSDP2 parameter (all processes take part) or of a plain one, on the CPU."""
    from torch.distributed.tensor import DTensor

    if not isinstance(parameter, DTensor):
        return parameter.detach().to("cpu", copy=True)
    gathered = parameter.full_tensor()
    # full_tensor may hand back an AsyncCollectiveTensor whose data only exists once waited for; a detached view
    # of it taken earlier would be saved as garbage
    if hasattr(gathered, "wait"):
        gathered = gathered.wait()
    return gathered.detach().to("cpu", copy=True).contiguous()
