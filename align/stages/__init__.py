"""The one table of stages: what each stage is, runs, reads and takes. Config checks, the pipeline's plan, the TRL
configs, dataset checks and `align export` all read it. Adding a stage is one entry here, its module, its section
class in align/config.py and a field of that class on `Recipe` (named as the stage).

This module imports nothing heavy: the recipe schema reads it at load time, long before torch is needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    run: str  # "module:function" with the signature run(recipe, out_dir, inputs) -> metrics; imported when it runs
    every_process: bool  # runs on every process under accelerate launch (trainers); else on the main one only
    produces_policy: bool = False  # its adapter is a chat model: eval compares the last one, export merges it
    online: bool = False  # samples answers from the policy and scores them with the reward model and/or functions
    reads: tuple[str, ...] = ()  # earlier stages whose output directories it reads, when the recipe lists them
    # section field -> demonstrations | preferences | feedback | prompts (align.data's row kinds)
    datasets: dict[str, str] = field(default_factory=dict)
    trl_config: str | None = None  # the trl config class its extra recipe keys go into
    # What align sets in that config beyond align.config.TRL_DEFAULTS (shown by `align validate`, recorded in
    # <stage>/trl_config.json); the recipe's own keys override both.
    trl_defaults: dict = field(default_factory=dict)

    def function(self):
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)


# Batches of rows of similar length (align.trainers.add_lengths measures the rows) pad far less: 1.3x the tokens/s of
# random batches for SFT (64 rows, 135M shape) on the 2-core CPU, same steps, same loss.
_GROUPED = {"train_sampling_strategy": "group_by_length"}
# DPO's reference is the adapter-disabled base (or the frozen SFT adapter): its log-probs are computed once before
# training, not again in every step.
_DPO = {**_GROUPED, "precompute_ref_log_probs": True}
# LoRA takes larger steps than trl's full-fine-tuning default of 1e-6 for online RL; answers stay short on CPU.
_ONLINE_RL = {"learning_rate": 1e-5, "max_completion_length": 128}
_PAIRS = {"dataset": "preferences", "eval_dataset": "preferences"}

# In the order a recipe lists them.
STAGES: dict[str, Stage] = {
    "sft": Stage("align.stages.sft:run", every_process=True, produces_policy=True,
                 datasets={"dataset": "demonstrations", "eval_dataset": "demonstrations"},
                 trl_config="SFTConfig", trl_defaults={"completion_only_loss": True, **_GROUPED}),
    # reads sft: samples of the SFT model make judge-labelled pairs and the on-policy check
    "reward": Stage("align.stages.reward:run", every_process=True, reads=("sft",), datasets=_PAIRS,
                    trl_config="RewardConfig", trl_defaults=_GROUPED),
    "dpo": Stage("align.stages.dpo:run", every_process=True, produces_policy=True, reads=("sft",),
                 datasets=_PAIRS, trl_config="DPOConfig", trl_defaults=_DPO),
    # unpaired feedback (thumbs up/down); trl's KL estimate pairs each row with its batch neighbours in stored
    # order, so batches stay sequential (the stage shuffles the rows once, by the recipe's seed)
    "kto": Stage("align.stages.kto:run", every_process=True, produces_policy=True, reads=("sft", "dpo"),
                 datasets={"dataset": "feedback", "eval_dataset": "feedback"}, trl_config="KTOConfig",
                 trl_defaults={"precompute_ref_log_probs": True, "learning_rate": 5e-5}),
    # one DPOTrainer per round on that round's pairs: a few dozen short pairs, so it logs every step
    "online_dpo": Stage("align.stages.online_dpo:run", every_process=True, produces_policy=True, online=True,
                        reads=("sft", "dpo", "kto", "reward"), datasets={"dataset": "prompts"},
                        trl_config="DPOConfig", trl_defaults={**_DPO, "logging_steps": 1}),
    # align's own PPO (trl 1.16 has none): its knobs are all fields of the ppo section
    "ppo": Stage("align.stages.ppo.steps:run", every_process=True, produces_policy=True, online=True,
                 reads=("sft", "dpo", "kto", "online_dpo", "reward"), datasets={"dataset": "prompts"}),
    "rloo": Stage("align.stages.group_rl:run_rloo", every_process=True, produces_policy=True, online=True,
                  reads=("sft", "dpo", "kto", "online_dpo", "ppo", "reward"), datasets={"dataset": "prompts"},
                  trl_config="RLOOConfig", trl_defaults=_ONLINE_RL),
    "grpo": Stage("align.stages.group_rl:run_grpo", every_process=True, produces_policy=True, online=True,
                  reads=("sft", "dpo", "kto", "online_dpo", "ppo", "rloo", "reward"), datasets={"dataset": "prompts"},
                  trl_config="GRPOConfig", trl_defaults=_ONLINE_RL),
    "eval": Stage("align.stages.evaluate:run", every_process=False,
                  reads=("reward", "sft", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo"),
                  datasets={"dataset": "preferences"}),
    # merges the last policy stage's adapter; the model card also carries the figures of every other finished stage
    "export": Stage("align.stages.export:run", every_process=False,
                    reads=("sft", "dpo", "kto", "online_dpo", "ppo", "rloo", "grpo")),
}

POLICY_STAGES = tuple(name for name, stage in STAGES.items() if stage.produces_policy)
ONLINE_STAGES = tuple(name for name, stage in STAGES.items() if stage.online)
TRL_STAGES = tuple(name for name, stage in STAGES.items() if stage.trl_config)
