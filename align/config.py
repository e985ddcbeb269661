"""Recipe schema and loading: every knob is a typed field with a default and a one-line doc.

Unknown keys, wrong types, references to missing sections and impossible stage combinations fail here, at load
time, before any model is touched. Keys inside a stage block that are not ours pass into the matching TRL config
(SFTConfig, RewardConfig, DPOConfig) and are checked against that dataclass's field names and types.
"""

from __future__ import annotations

import copy
import difflib
import dataclasses
import functools
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator,
)

from align.stages import ONLINE_STAGES, POLICY_STAGES, STAGES

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
STAGE_ORDER = tuple(STAGES)
StageName = Literal[STAGE_ORDER]


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file, the key and what was expected."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSection(Section):
    name_or_path: str = Field(EMBEDDED_MODEL, description="Hub id, local directory, or the embedded default model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype of the un-quantised parts: auto = bfloat16 on GPU and on CPUs with native "
        "bf16 (AVX-512 BF16 or AMX; `align env` says), else float32."
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the tokenizer's; None keeps it (or a default if absent)."
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the hub.")
    attn_implementation: str | None = Field(None, description="eager, sdpa or flash_attention_2; None = default.")


class QuantizationSection(Section):
    load_in_4bit: bool = Field(False, description="QLoRA: load the frozen base in 4 bits with bitsandbytes.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; nf4 suits normally distributed weights.")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Dtype of the matmuls on dequantised weights: auto as model.dtype (bfloat16 on GPU)."
    )


class LoraSection(Section):
    r: int = Field(16, gt=0, description="LoRA rank: higher = more capacity and memory.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear for every linear layer but the LM head."
    )


# The row fields a dataset's `columns:` may map from other names (align.formats reads the layouts built on them).
MAPPABLE_COLUMNS = ("prompt", "completion", "chosen", "rejected", "messages", "label", "system", "conversations",
                    "instruction", "input", "output", "history", "completions")


class DataSource(Section):
    """Where rows come from. Exactly one of path / hub / bundled / labels."""

    path: str | None = Field(None, description="Local JSONL, JSON, CSV or Parquet file.")
    hub: str | None = Field(None, description="Hugging Face datasets name (needs the hub).")
    bundled: str | None = Field(None, description="A dataset shipped with align: sft, prefs_train, prefs_test.")
    labels: str | None = Field(None, description="A label database from `align label` (its A/B judgments as pairs).")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Split to read from a hub dataset.")
    limit: int | None = Field(None, gt=0, description="Use only the first N rows (quick experiments).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="align's column name -> the file's, e.g. {prompt: question, chosen: good}."
    )

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(MAPPABLE_COLUMNS))
        if unknown:
            raise ValueError(f"cannot map {unknown}: the names align reads are {', '.join(MAPPABLE_COLUMNS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return expand_data_shorthand(value)

    @field_validator("path", "hub", "bundled", "labels")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> DataSource:
        given = [k for k in ("path", "hub", "bundled", "labels") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hub, bundled, labels (got {given or 'none'})")
        return self

    def describe(self) -> str:
        if self.path:
            return self.path
        if self.labels:
            return f"labels:{self.labels}"
        return f"hub:{self.hub}[{self.split}]" if self.hub else f"bundled:{self.bundled}"


def expand_data_shorthand(value: Any) -> Any:
    """A dataset given as one string: "bundled:sft", "hub:Anthropic/hh-rlhf", "labels:labels.db", or a file path."""
    if isinstance(value, str):
        for prefix in ("bundled", "hub", "labels"):
            if value.startswith(prefix + ":"):
                return {prefix: value[len(prefix) + 1 :]}
        return {"path": value}
    return value


class TrlStage(Section):
    """A training stage: our own fields, plus any field of the stage's TRL config class."""

    model_config = ConfigDict(extra="allow", validate_default=True)
    trl_config_name: typing.ClassVar[str] = ""
    dataset: DataSource = Field(description="Training rows.")
    eval_dataset: DataSource | None = Field(None, description="Held-out rows for evaluation during training.")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        # Before the fields are checked: a typo of our own field (kto.datset) would otherwise only show up as
        # that field being missing.
        if not isinstance(value, dict):
            return value
        fields = trl_config_fields(cls.trl_config_name)
        for key in value:
            if key not in cls.model_fields and key not in fields:
                close = difflib.get_close_matches(str(key), [*cls.model_fields, *fields], n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ValueError(f"unknown key '{key}': not a field of ours nor of trl.{cls.trl_config_name}{hint}")
        return value

    @model_validator(mode="after")
    def _check_trl_keys(self) -> TrlStage:
        fields = trl_config_fields(self.trl_config_name)
        for key, value in (self.model_extra or {}).items():
            if key in RESERVED_TRL_KEYS:
                raise ValueError(f"'{key}' is set by align ({RESERVED_TRL_KEYS[key]}); remove it from the recipe")
            adapter = fields[key]
            if adapter is not None:
                try:
                    self.model_extra[key] = adapter.validate_python(value)
                except ValidationError as err:
                    msg = err.errors()[0]["msg"]
                    raise ValueError(f"'{key}': {msg} (got {value!r})") from None
        return self

    @property
    def trl_args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SFTStage(TrlStage):
    trl_config_name: typing.ClassVar[str] = STAGES["sft"].trl_config


class JudgeLabelledPairs(Section):
    """Pairs of the SFT model's own answers, ordered by a judge standing in for human labellers (Gao et al.'s
    setup: a gold model labels the proxy reward model's training data). Naming the judge here is the recipe
    saying so explicitly: the report then lists it among the signals that trained the run."""

    judge: str = Field(description="The labelling judge, 'module:function' or 'file.py:function'.")
    prompts: DataSource = Field(description="Training prompts (with the columns the judge reads, e.g. answer).")
    samples_per_prompt: int = Field(4, ge=2, description="SFT answers sampled per prompt; best vs worst is a pair.")
    max_prompts: int | None = Field(None, gt=0, description="Use at most this many prompts; None = all.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the SFT answers.")
    max_new_tokens: int = Field(48, gt=0, description="Answer length limit in tokens.")

    @field_validator("judge")
    @classmethod
    def _importable(cls, value: str) -> str:
        from align.reward_functions import load_reward_function

        load_reward_function(value)
        return value


def _openings_not_blank(value: list[str]) -> list[str]:
    blank = [i for i, text in enumerate(value, start=1) if not text.strip()]
    if blank:
        raise ValueError(f"opening {blank[0]} is blank: give the words a reply starts with, e.g. \"I'm sorry, but\"")
    return value


# Words a reply is made to start with, so that a model shows answers it seldom gives unprompted.
Openings = Annotated[list[str], AfterValidator(_openings_not_blank)]


class LabelledSamples(Section):
    """The SFT model's own answers on training prompts, queued as pairs in a label database (the web app's store)
    and labelled there by a labeller standing in for people; the reward model trains on every preference pair
    the database holds (people's labels in it too), or on each pair's majority with labels_per_pair above 1."""

    prompts: DataSource = Field(description="Training prompts (with the columns the labeller reads: answer, category).")
    labeller: str = Field("align.labeller:simulated",
                          description="The labeller, 'module:function' or 'file.py:function' (see align/labeller.py).")
    noise: float = Field(0.2, ge=0, le=0.5, description="Share of the labeller's decisive labels flipped at random.")
    label_db: str | None = Field(None, description="Label database; None = labels.db in the run directory.")
    annotator: str = Field("simulated-labeller", min_length=1, description="The name its labels are stored under.")
    labels_per_pair: int = Field(
        1, ge=1, le=5, description="Labels per pair, as that many annotators (annotator, annotator-2, ...; each its "
        "own noise); above 1 the reward model trains on each pair's majority and drops pairs without one, as "
        "annotation projects keep agreed labels; 1 = every label is a training pair.")
    samples_per_prompt: int = Field(4, ge=2, description="SFT answers sampled per prompt; every two that differ are a pair.")
    max_prompts: int | None = Field(None, gt=0, description="Use at most this many prompts; None = all.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the SFT answers.")
    max_new_tokens: int = Field(32, gt=0, description="Answer length limit in tokens.")
    openings: Openings = Field(
        [], description="Reply openings the SFT model also continues from, one answer per opening and prompt beside "
        "its free samples, so replies it seldom gives unprompted (a decline, 'I don't know') are labelled on every "
        "kind of prompt; [] = free samples only.")
    balance_openings: Literal["drop", "repeat"] | None = Field(
        None, description="Per opening, as many of the database's pairs choosing a reply that begins with it as "
        "rejecting one, so the reward model learns where a decline fits from the prompt, not how common declines "
        "are: 'drop' the commoner direction's surplus at random (the database keeps every label), or 'repeat' the "
        "rarer direction's pairs; None = every pair.")

    @model_validator(mode="after")
    def _check_balance(self) -> LabelledSamples:
        if self.balance_openings and not self.openings:
            raise ValueError("balance_openings balances the labelled pairs by the replies' openings: list openings too")
        return self

    @field_validator("labeller")
    @classmethod
    def _importable(cls, value: str) -> str:
        from align.reward_functions import load_labeller

        load_labeller(value)
        return value


class RewardStage(TrlStage):
    trl_config_name: typing.ClassVar[str] = STAGES["reward"].trl_config
    judge_labelled_pairs: JudgeLabelledPairs | None = Field(
        None, description="Add judge-ordered pairs of the SFT model's samples to the training pairs; None = off."
    )
    labelled_samples: LabelledSamples | None = Field(
        None, description="Add pairs of the SFT model's samples labelled through a label database; None = off."
    )
    init_from_sft: bool = Field(
        False, description="Start the reward model's LoRA from the SFT adapter (InstructGPT starts its reward model "
        "from the SFT model), with a new score head; needs an sft stage. False = from the base model."
    )
    policy_check_prompts: int = Field(
        128, ge=0, description="Held-out eval prompts on which the reward model ranks the SFT model's own samples "
        "(needs eval.judges and an sft stage); 0 = off."
    )
    policy_check_samples: int = Field(
        4, ge=2, description="SFT candidates per prompt in that check (best-of-n's n): the greedy answer and n-1 samples."
    )
    policy_check_temperature: float = Field(
        0.7, gt=0, description="Sampling temperature in that check; set it to the online stage's temperature."
    )
    policy_check_bootstrap: int = Field(
        1000, ge=0, description="Bootstrap resamples of the check's prompts for its 95% intervals, whose lower ends "
        "decide whether the reward model is trusted; 0 = none (the point estimates decide)."
    )
    group_by_prompt: bool = Field(
        False, description="Train on all of a prompt's pairs at once, each answer scored once (InstructGPT's "
        "batching: several times fewer forward passes when prompts have many pairs, but fewer, larger steps); "
        "per_device_train_batch_size then counts prompts, each with every answer the pairs hold for it."
    )


class DPOStage(TrlStage):
    trl_config_name: typing.ClassVar[str] = STAGES["dpo"].trl_config


class KTOStage(TrlStage):
    """KTO on unpaired feedback: answers rated up or down (a label database's chat ratings, or KTO rows
    {prompt, completion, label}). Any other key goes to trl.KTOConfig (beta, desirable_weight, ...)."""

    trl_config_name: typing.ClassVar[str] = STAGES["kto"].trl_config
    dataset: DataSource = Field(description="Rated answers: KTO rows, or labels: a label database's chat ratings.")

    @model_validator(mode="after")
    def _batch_for_the_kl_term(self) -> KTOStage:
        settings = self.model_extra or {}
        if settings.get("loss_type", "kto") == "apo_zero_unpaired":  # the one loss without trl's batch KL estimate
            return self
        if settings.get("per_device_train_batch_size", 8) < 2:
            raise ValueError("per_device_train_batch_size: KTO needs 2 or more per batch, because its KL term "
                             "compares each answer with the other answers in its batch")
        if settings.get("train_sampling_strategy", "sequential") != "sequential":
            raise ValueError("train_sampling_strategy: KTO's KL term pairs each row with its neighbours in stored "
                             "order, so batches must be 'sequential' (the stage shuffles the rows once itself)")
        return self


class VLLMSampling(Section):
    """Sampling with vLLM instead of align's own decode loop, for PPO and online DPO. The names are trl's
    (GRPOConfig / RLOOConfig take the same keys), and trl's vLLM generation does the work: before each rollout the
    policy's LoRA is merged into vLLM's copy of the weights, and unmerged from the trained model after."""

    use_vllm: bool = Field(
        False, description="Sample with vLLM (pip install 'align[vllm]', a CUDA GPU); false = align's decode loop."
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: an engine in each training process; server: a `trl vllm-serve` server."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="Share of the GPU vLLM reserves for weights and KV cache (colocate)."
    )
    vllm_server_base_url: str | None = Field(
        None, description="The server's URL in server mode, e.g. http://localhost:8000."
    )
    vllm_enable_sleep_mode: bool = Field(
        False, description="Release vLLM's GPU memory while the policy trains (colocate); slower to wake."
    )


class RewardModelGate(Section):
    """What an online stage does with a reward model that the reward stage's on-policy check did not trust (it
    ranked the SFT model's own answers no better than chance, or its best-of-n no better than greedy, by the lower
    ends of the check's 95% intervals)."""

    require_trusted_reward_model: bool = Field(
        True, description="Refuse to run when the reward stage's check did not show the reward model better than "
        "chance and than greedy at ranking the SFT model's own answers (lower ends of its 95% intervals)."
    )
    keep_start_if_untrusted: bool = Field(
        False, description="With such a reward model, stop at once and keep the starting policy as the stage's "
        "result (the run goes on to eval and export) instead of failing the run."
    )


class OnlineDPOStage(TrlStage, VLLMSampling, RewardModelGate):
    """On-policy preference rounds (iterative / online DPO): each round the current policy samples answers to
    training prompts, the reward model and/or reward functions score them, best vs worst become pairs, and DPO
    (trl DPOTrainer, reference = the policy at the round's start) trains on them with an NLL term on the chosen
    answer. Any other key goes to trl.DPOConfig (beta, learning_rate, ...)."""

    model_config = TrlStage.model_config  # other keys go to trl.DPOConfig (the vLLM mixin alone forbids them)
    trl_config_name: typing.ClassVar[str] = STAGES["online_dpo"].trl_config
    dataset: DataSource = Field(description="Prompts to answer: prompt, messages, demonstration or preference rows.")
    rounds: int = Field(2, gt=0, description="Sample -> score -> pair -> train rounds.")
    prompts_per_round: int = Field(
        160, gt=0, description="Training prompts answered each round: the same ones every round (a seeded pick)."
    )
    samples_per_prompt: int = Field(4, ge=2, description="Candidate answers per prompt; best vs worst is a pair.")
    include_greedy: bool = Field(
        True, description="One candidate is the policy's greedy answer, so a pair can keep what it already does well."
    )
    openings: Openings = Field(
        [], description="Reply openings the policy also continues from, one more candidate per opening and prompt, "
        "so the reward model can pick a reply the policy seldom gives unprompted (a decline, 'I don't know') "
        "where it is right; [] = the policy's own answers only.")
    balance_openings: Literal["drop", "repeat"] | None = Field(
        None, description="Per opening, as many pairs choosing a reply that begins with it as rejecting one, so a "
        "round teaches where a decline fits, not more or fewer declines: 'drop' the commoner direction's surplus at "
        "random, or 'repeat' the rarer direction's pairs; None = every pair as built.")
    opening_pairs: bool = Field(
        False, description="Per prompt, also its best opened answer against its best free one (the higher scored "
        "chosen, or as labelled), so a round asks whether the opening's reply beats an answer also on prompts "
        "where the best and worst do not differ in it.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0 = off.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 = off.")
    max_new_tokens: int = Field(48, gt=0, description="Answer length limit in tokens.")
    use_reward_model: bool = Field(True, description="Score answers with this run's reward model.")
    reward_functions: list[str] = Field(
        default_factory=list, description="Python reward functions 'module:function' or 'file.py:function'."
    )
    reward_weights: list[float] | None = Field(
        None, description="Weights of the reward model then each function, summed into the score; None = all 1."
    )
    relabel_with: str | None = Field(
        None, description="Iterative RLHF: each round this judge ('module:function', standing in for labellers) "
        "orders pairs of the round's candidates and the reward model trains on them before it scores the round, so "
        "it keeps up with what the policy now writes. None = the reward stage's model as it is."
    )
    min_score_gap: float = Field(0.0, ge=0, description="Pairs need best - worst score above this (ties dropped).")
    max_similarity: float = Field(
        0.9, gt=0, le=1, description="Drop pairs whose texts are this similar (difflib ratio after normalising)."
    )
    nll_weight: float = Field(
        1.0, ge=0, description="Weight of the NLL term on chosen answers (RPO, trl loss_type sft); 0 = plain DPO."
    )
    missing_eos_penalty: float = Field(1.0, ge=0, description="Subtracted from the scores of cut-off answers.")
    kl_samples: int = Field(64, ge=0, description="Answers per round on which KL to the starting policy is measured.")
    label_db: str | None = Field(
        None, description="People judge each round: its pairs go to this label database (align label --db) and "
        "the run stops until they are labelled; the next align run trains on the labels. None = the rewards judge."
    )
    labels_needed: int | None = Field(
        None, gt=0, description="With label_db: labelled pairs a round needs before it trains; None = all queued."
    )
    labeller: str | None = Field(
        None, description="A labeller ('module:function', see align/labeller.py) that judges each round's pairs in "
        "the label database as an annotator would, so the run goes on; label_db None = the run's labels.db. "
        "None = people judge them.")
    labeller_noise: float = Field(0.2, ge=0, le=0.5, description="Share of the labeller's decisive labels flipped.")
    annotator: str = Field("simulated-labeller", min_length=1, description="The name the labeller's labels are "
                           "stored under.")
    labels_per_pair: int = Field(
        1, ge=1, le=5, description="The labeller's labels per pair, as that many annotators (annotator, annotator-2, "
        "...; each its own noise); a round trains on each pair's majority either way, dropping pairs without one.")

    @model_validator(mode="after")
    def _check_online(self) -> OnlineDPOStage:
        if not self.use_reward_model and not self.reward_functions and not self.label_db and not self.labeller:
            raise ValueError("no judge: set use_reward_model: true, list reward_functions, give label_db (people "
                             "choose) or name a labeller")
        sources = int(self.use_reward_model) + len(self.reward_functions)
        if self.reward_weights is not None and len(self.reward_weights) != sources:
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {sources} reward sources "
                             "(the reward model if used, then each reward function)")
        if self.balance_openings and not self.openings:
            raise ValueError("balance_openings balances pairs by the replies' openings: list openings too")
        if self.opening_pairs and not self.openings:
            raise ValueError("opening_pairs pairs each prompt's opened answer with a free one: list openings too")
        if self.openings and self.use_vllm:
            raise ValueError("openings are continued by align's own decode loop: set use_vllm: false or openings: []")
        if self.relabel_with and not self.use_reward_model:
            raise ValueError("relabel_with trains this run's reward model each round: set use_reward_model: true")
        if self.relabel_with:
            from align.reward_functions import load_reward_function

            load_reward_function(self.relabel_with)
        if self.labeller:
            from align.reward_functions import load_labeller

            load_labeller(self.labeller)
        elif self.labels_per_pair > 1:
            raise ValueError("labels_per_pair is how many times the labeller judges each pair: name a labeller "
                             "(people's labels come as many as the labelling app's annotators give)")
        if self.nll_weight and {"loss_type", "loss_weights"} & set(self.model_extra or {}):
            raise ValueError("nll_weight sets trl's loss_type [sigmoid, sft] and loss_weights; set nll_weight: 0 "
                             "to give loss_type / loss_weights yourself")
        from align.reward_functions import load_reward_function

        for spec in self.reward_functions:
            load_reward_function(spec)
        return self

    @property
    def trl_args(self) -> dict[str, Any]:
        extra = dict(self.model_extra or {})
        if self.nll_weight:
            extra.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, self.nll_weight])
        return extra


class OnlineTrlStage(TrlStage, RewardModelGate):
    """RLOO / GRPO through trl: the policy samples several answers per prompt and learns from their relative
    rewards; the reward is this run's reward model and/or Python functions (weights: trl's reward_weights)."""

    model_config = TrlStage.model_config  # other keys go to the trl config (the gate mixin alone forbids them)

    use_reward_model: bool = Field(True, description="Score answers with this run's reward model.")
    reward_functions: list[str] = Field(
        default_factory=list, description="Python reward functions 'module:function' or 'file.py:function'."
    )

    @model_validator(mode="after")
    def _check_rewards(self) -> OnlineTrlStage:
        if not self.use_reward_model and not self.reward_functions:
            raise ValueError("no reward: set use_reward_model: true or list reward_functions")
        from align.reward_functions import load_reward_function

        for spec in self.reward_functions:
            load_reward_function(spec)
        return self


class RLOOStage(OnlineTrlStage):
    trl_config_name: typing.ClassVar[str] = STAGES["rloo"].trl_config


class GRPOStage(OnlineTrlStage):
    trl_config_name: typing.ClassVar[str] = STAGES["grpo"].trl_config


class PPOStage(VLLMSampling, RewardModelGate):
    """Online RL against the reward model: sample answers, score them, clipped PPO updates with a per-token KL
    penalty to the reference (the model the stage starts from); advantages from a value function and GAE, or from
    the other answers to the same prompt."""

    dataset: DataSource = Field(description="Prompts to answer: prompt, messages, demonstration or preference rows.")
    steps: int = Field(40, gt=0, description="PPO iterations; each samples one rollout batch and optimises on it.")
    rollout_batch_size: int = Field(16, gt=0, description="Answers sampled per iteration, per process.")
    answers_per_prompt: int = Field(
        1, gt=0, description="Each iteration's prompts are answered this many times (rollout_batch_size answers to "
        "rollout_batch_size / answers_per_prompt prompts).")
    baseline: Literal["value", "prompt"] = Field(
        "value", description="What an answer's reward is measured against: a value model with GAE (InstructGPT's "
        "PPO), or the mean of the other answers to its prompt (leave-one-out, as RLOO; no value model trains), so "
        "the reward model's level between prompts cancels and only its ranking within a prompt teaches.")
    mini_batch_size: int = Field(8, gt=0, description="Responses per optimiser step; divides rollout_batch_size.")
    ppo_epochs: int = Field(2, gt=0, description="Optimisation passes over each rollout batch.")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate of the policy adapter.")
    value_learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate of the value adapter and head.")
    lr_schedule: Literal["constant", "linear"] = Field("linear", description="Constant rates, or decaying to 0.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping of policy and value parameters.")
    clip_range: float = Field(0.2, gt=0, description="PPO policy ratio clip: ratios outside 1 +- this get no gradient.")
    value_clip_range: float = Field(0.2, gt=0, description="Value predictions move at most this far from the old.")
    kl_coef: float = Field(0.05, ge=0, description="(Initial) weight of the per-token KL penalty to the reference.")
    kl_controller: Literal["fixed", "adaptive"] = Field("fixed", description="Keep kl_coef, or adapt it to target_kl.")
    target_kl: float = Field(6.0, gt=0, description="Adaptive controller: the per-response KL (nats) to steer to.")
    kl_horizon: int = Field(10000, gt=0, description="Adaptive controller: responses over which kl_coef adapts.")
    max_kl: float | None = Field(None, gt=0, description="Stop early (keeping the last checkpoint) above this KL.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over response tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda: bias (0) versus variance (1) of advantages.")
    reward_normalization: Literal["none", "batch", "running"] = Field(
        "none", description="Scale scores by the batch's or a running mean/std before the KL penalty is added."
    )
    reward_clip: float | None = Field(None, gt=0, description="Clip (normalised) scores to +- this.")
    whiten_advantages: bool = Field(True, description="Normalise advantages to zero mean, unit variance per batch.")
    max_prompt_length: int = Field(256, gt=0, description="Refuse prompts longer than this many tokens.")
    max_new_tokens: int = Field(48, gt=0, description="Response length limit in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts (log-probs use it too).")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0 = off.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 = off.")
    openings: Openings = Field(
        [], description="Reply openings some rollouts start from, the policy continuing them, so the reward model "
        "can reward a reply the policy seldom samples (a decline, 'I don't know') where it is right; [] = off.")
    opening_fraction: float = Field(
        0.25, gt=0, le=1, description="Share of each rollout batch that starts from an opening (they take turns).")
    balance_openings: bool = Field(
        False, description="baseline: prompt: a step's prompts where the opened answers beat the free ones and those "
        "where they lost weigh the same in total, so the policy learns where an opening fits, not how often.")
    missing_eos: Literal["penalty", "zero", "keep"] = Field(
        "penalty", description="Score of responses cut off before EOS: minus missing_eos_penalty, zero, or as is."
    )
    missing_eos_penalty: float = Field(1.0, ge=0, description="Subtracted from cut-off responses' scores.")
    use_reward_model: bool = Field(True, description="Score with the reward model (this run's, or reward_model_path).")
    reward_model_path: str | None = Field(
        None, description="A separate sequence-classification reward model directory (own tokenizer) instead of "
        "this run's reward stage."
    )
    reward_functions: list[str] = Field(
        default_factory=list, description="Python reward functions 'module:function' or 'file.py:function'."
    )
    reward_weights: list[float] | None = Field(
        None, description="Weights of the reward model then each function, summed into the score; None = all 1."
    )
    value_init: Literal["reward", "fresh"] = Field(
        "reward", description="Value adapter and head start as a copy of the reward model, or fresh."
    )
    rollout_cache: Literal["auto", "dynamic", "static"] = Field(
        "auto", description="Rollout KV cache: static (on GPU a compiled decode step unless 4-bit), dynamic, or "
                            "auto = static where that compiles (GPU, not 4-bit), else dynamic."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    save_steps: int = Field(10, gt=0, description="Checkpoint (adapters, optimiser, RNG, KL state) every N steps.")
    save_total_limit: int = Field(2, gt=0, description="Keep this many newest checkpoints.")
    sample_every: int = Field(10, gt=0, description="Write example rollouts to samples.jsonl every N steps.")

    @model_validator(mode="after")
    def _check(self) -> PPOStage:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size {self.mini_batch_size} must divide rollout_batch_size {self.rollout_batch_size}"
            )
        if self.rollout_batch_size % self.answers_per_prompt:
            raise ValueError(f"answers_per_prompt {self.answers_per_prompt} must divide rollout_batch_size "
                             f"{self.rollout_batch_size}")
        if self.baseline == "prompt" and self.answers_per_prompt < 2:
            raise ValueError("baseline: prompt measures each answer against the other answers to its prompt: "
                             f"set answers_per_prompt to 2 or more (it is {self.answers_per_prompt})")
        if self.balance_openings and not (self.openings and self.baseline == "prompt"):
            raise ValueError("balance_openings weighs the prompts an opening won on against those it lost on: it "
                             "needs openings and baseline: prompt")
        if not self.use_reward_model and not self.reward_functions:
            raise ValueError("no reward: set use_reward_model: true or list reward_functions")
        if self.reward_model_path and not self.use_reward_model:
            raise ValueError("reward_model_path is set but use_reward_model is false")
        if self.openings and self.use_vllm:
            raise ValueError("openings are continued by align's own decode loop: set use_vllm: false or openings: []")
        sources = int(self.use_reward_model) + len(self.reward_functions)
        if self.reward_weights is not None and len(self.reward_weights) != sources:
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} entries for {sources} reward sources "
                f"(the reward model if used, then each reward function)"
            )
        if self.value_init == "reward" and (self.reward_model_path or not self.use_reward_model):
            self.value_init = "fresh"  # only a reward adapter on the shared base can seed the value model
        from align.reward_functions import load_reward_function

        for spec in self.reward_functions:
            load_reward_function(spec)  # import now: a typo fails at load time, not after SFT
        return self


class EvalStage(Section):
    dataset: DataSource = Field(
        DataSource(bundled="prefs_test"), description="Held-out rows whose prompts both models answer."
    )
    max_prompts: int = Field(64, gt=0, description="Evaluate on at most this many prompts.")
    max_new_tokens: int = Field(64, gt=0, description="Generation length limit per answer.")
    batch_size: int = Field(16, gt=0, description="Prompts generated and scored per batch.")
    kl_prompts: int = Field(
        128, gt=0, description="Prompts on which KL to the baseline and reference perplexity are measured (a "
        "forward pass per prompt and model)."
    )
    baseline: Literal["sft", "base"] = Field("sft", description="What the final policy is compared against.")
    judges: list[str] = Field(
        default_factory=list, description="Gold judges 'module:function' scoring each answer (reward-function "
        "signature, e.g. align.judges:gold): final, sft and base model are compared on them. They never train."
    )

    @field_validator("judges")
    @classmethod
    def _judges_importable(cls, value: list[str]) -> list[str]:
        from align.reward_functions import load_reward_function

        for spec in value:
            load_reward_function(spec)  # a typo fails at load time, not after training
        return value


class ExportStage(Section):
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the merged model; never the 4-bit training weights."
    )
    check_prompts: list[str] = Field(
        default_factory=lambda: ["What is the capital of France?", "What is 3 + 4?", "Say hello politely."],
        description="Prompts on which the reloaded export must reproduce the adapter model's greedy output.",
    )
    check_new_tokens: int = Field(24, gt=0, description="Greedy tokens compared per check prompt.")
    logits_atol: float = Field(
        1e-3, gt=0, description="Largest allowed |logit difference| between export and adapter model (float32)."
    )
    gguf: Literal["f16", "q8_0"] | None = Field(
        None, description="Also write export/gguf/model.<type>.gguf and an Ollama Modelfile (pip install 'align[gguf]')."
    )
    gguf_min_agreement: float = Field(
        0.9, gt=0, le=1, description="q8_0: least share of the merged model's answer tokens the GGUF must predict "
        "top-1 (f16 must predict all, with the same greedy answers)."
    )

    @field_validator("gguf")
    @classmethod
    def _llama_cpp_installed(cls, value: str | None) -> str | None:
        import importlib.util

        missing = [m for m in ("llama_cpp", "sentencepiece") if importlib.util.find_spec(m) is None]
        if value and missing:
            raise ValueError("a GGUF export is checked with llama.cpp: pip install 'align[gguf]' (builds "
                             "llama-cpp-python once), or remove export.gguf")
        return value


class Recipe(Section):
    name: str = Field(description="Run name: outputs go to <output_root>/<name>/<stage>/.")
    description: str = Field("", description="What this recipe is for (goes into the model card).")
    output_root: str = Field("runs", description="Directory holding run directories.")
    seed: int = Field(42, description="Seed for data order, LoRA init and sampling.")
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers the stages log to; tensorboard writes <stage>/tensorboard/. [] for none.",
    )
    stages: list[StageName] = Field(description=f"Stages to run, in this order: {', '.join(STAGE_ORDER)}.")
    isolate_stages: bool = Field(
        True,
        description="Run each stage in a child process, so all it loaded goes back to the system when it ends "
        "(single-process runs; under accelerate launch the stages run in the launched processes).",
    )
    model: ModelSection = Field(default_factory=ModelSection, description="Base model shared by every stage.")
    quantization: QuantizationSection = Field(default_factory=QuantizationSection, description="4-bit loading.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapter shape, shared by every stage.")
    sft: SFTStage | None = Field(None, description="Supervised fine-tuning on demonstrations.")
    reward: RewardStage | None = Field(None, description="Reward model on preference pairs.")
    dpo: DPOStage | None = Field(None, description="Direct preference optimisation on preference pairs.")
    kto: KTOStage | None = Field(None, description="KTO on answers people rated up or down.")
    online_dpo: OnlineDPOStage | None = Field(None, description="On-policy preference rounds judged by rewards.")
    ppo: PPOStage | None = Field(None, description="PPO against the reward model with a KL penalty.")
    rloo: RLOOStage | None = Field(None, description="REINFORCE leave-one-out (trl RLOOTrainer).")
    grpo: GRPOStage | None = Field(None, description="Group relative policy optimisation (trl GRPOTrainer).")
    eval: EvalStage = Field(default_factory=EvalStage, description="Gold judges and reward-model win rate.")
    export: ExportStage = Field(default_factory=ExportStage, description="Merged chat model in HF format.")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        import importlib.util

        for tracker in value:
            if importlib.util.find_spec(tracker) is None:
                raise ValueError(f"'{tracker}' is not installed (pip install {tracker}), or remove it from report_to")
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it becomes a directory name)")
        return value

    @model_validator(mode="after")
    def _check_stages(self) -> Recipe:
        stages = self.stages
        if not stages:
            raise ValueError("stages: list at least one stage")
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages: each stage at most once (got {stages})")
        if stages != sorted(stages, key=STAGE_ORDER.index):
            raise ValueError(f"stages: must follow the order {list(STAGE_ORDER)} (got {stages})")
        for stage in stages:
            if getattr(self, stage) is None:
                raise ValueError(f"stages lists '{stage}' but the recipe has no '{stage}:' section")
        for stage in ONLINE_STAGES:
            section = getattr(self, stage)
            if stage in stages and section.use_reward_model and not getattr(section, "reward_model_path", None):
                if "reward" not in stages:
                    raise ValueError(
                        f"stage '{stage}' scores with this run's reward model: add 'reward' to stages, or set "
                        f"{stage}.use_reward_model: false and list reward_functions"
                    )
        if "reward" in stages and self.reward.init_from_sft and "sft" not in stages:
            raise ValueError("reward.init_from_sft starts the reward model from this run's SFT adapter: add 'sft' to "
                             "stages, or set reward.init_from_sft: false")
        if "eval" in stages:
            if "reward" not in stages:
                raise ValueError("stage 'eval' scores answers with the reward model: add 'reward' to stages")
            if not any(s in stages for s in POLICY_STAGES):
                raise ValueError("stage 'eval' compares a trained policy: add 'sft' or 'dpo' to stages")
            if self.eval.baseline == "sft" and not ("sft" in stages and self.policy_stage() != "sft"):
                raise ValueError(
                    "eval.baseline 'sft' compares the final policy (dpo, ppo, rloo, grpo) against sft: list both, "
                    "or set eval.baseline: base"
                )
        if "export" in stages and not any(s in stages for s in POLICY_STAGES):
            raise ValueError("stage 'export' merges a trained chat adapter: add 'sft' or 'dpo' to stages")
        return self

    def policy_stage(self) -> str:
        """The last stage whose adapter is the chat model (what eval compares and export merges)."""
        return [s for s in self.stages if s in POLICY_STAGES][-1]

    def starting_policy(self, stage: str) -> str | None:
        """The policy stage before `stage` whose adapter it continues (dpo and ppo start from sft), if any."""
        earlier = [s for s in self.stages[: self.stages.index(stage)] if s in POLICY_STAGES]
        return earlier[-1] if earlier else None


# ------------------------------------------------------------------- TRL settings align changes from trl's defaults
# A stage's trl config is built (align.trainer_settings.trl_args) from trl's defaults, then what align derives from
# the recipe (RESERVED_TRL_KEYS: directories, seeds, precision), then TRL_DEFAULTS, then the stage's own
# `trl_defaults` in the stage table (align/stages/__init__.py), then the keys the recipe gives in the stage's section. `align validate` prints every value that differs from
# trl's defaults and where it came from; each stage writes the whole config it ran with to <stage>/trl_config.json.

# Keys align derives from the recipe, with the reason shown to a recipe that sets them itself.
RESERVED_TRL_KEYS = {
    "output_dir": "runs/<name>/<stage>/ from the recipe's name and output_root",
    "model_init_kwargs": "the model is built from the model:/quantization: sections",
    "seed": "the recipe's top-level seed",
    "data_seed": "the recipe's top-level seed",
}
# Also derived, but a recipe may override them: report_to (the recipe's report_to), bf16 (on when model.dtype
# resolves to bfloat16), use_cpu (on when there is no GPU).
TRL_DEFAULTS = {
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,  # checkpoints are for resuming, and a 4-bit 8B run's are big
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "dataloader_num_workers": 0,
    # trl turns it on by default; it recomputes every activation (about a third more time per step), so only a
    # recipe that runs short of memory (long sequences, big models) should ask for it.
    "activation_checkpointing": False,
}
# transformers 5 renamed these (the old names still work, with a FutureWarning on every run)
RENAMED_TRL_KEYS = {"gradient_checkpointing": "activation_checkpointing",
                    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


@functools.cache
def trl_config_fields(class_name: str) -> dict[str, TypeAdapter | None]:
    """Field name -> pydantic validator for its annotation (None where the annotation is not checkable)."""
    import trl

    cls = getattr(trl, class_name)
    hints = typing.get_type_hints(cls)
    out: dict[str, TypeAdapter | None] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        try:
            out[f.name] = TypeAdapter(hints[f.name], config=ConfigDict(strict=False))
        except Exception:  # some transformers types (enums of strategies, dicts of objects) are not worth modelling
            out[f.name] = None
    return out


# ------------------------------------------------------------------------------------------------ loading

_REF = re.compile(r"\$\{([^}]+)\}")


def _lookup(tree: dict, dotted: str, where: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RecipeError(f"{where}: reference ${{{dotted}}} points at nothing ('{part}' is missing)")
        node = node[part]
    return node


def resolve_references(tree: dict) -> dict:
    """Replace ${a.b} with the value at a.b. A whole-string reference keeps the value's type."""

    def resolve(node: Any, where: str, depth: int = 0) -> Any:
        if depth > 20:
            raise RecipeError(f"{where}: references nest too deep (a cycle?)")
        if isinstance(node, dict):
            return {k: resolve(v, f"{where}.{k}" if where else str(k), depth) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, f"{where}[{i}]", depth) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            whole = _REF.fullmatch(node)
            if whole:
                return resolve(_lookup(tree, whole.group(1), where), where, depth + 1)
            return _REF.sub(lambda m: str(resolve(_lookup(tree, m.group(1), where), where, depth + 1)), node)
        return node

    return resolve(tree, "")


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply command-line `a.b.c=value` overrides; the value is parsed as YAML (so 3, true, [a, b] work)."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override '{item}': expected KEY=VALUE, e.g. sft.num_train_epochs=2")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if part in ("dataset", "eval_dataset"):  # so dpo.dataset.limit=16 works on "bundled:prefs_train"
                node[part] = expand_data_shorthand(node[part])
            if not isinstance(node[part], dict):
                raise RecipeError(f"override '{item}': '{part}' is not a section")
            node = node[part]
        node[parts[-1]] = value
    return tree


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: the recipe is not valid:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), _section_keys(e["loc"][:-1]), n=3)
            msg = "unknown key" + (f" (did you mean {', '.join(close)}?)" if close else "")
        # A pass-through trl key names itself in the message ('beta': ...): put it in the path, like our fields.
        key = re.match(r"(?:unknown key )?'(\w+)'(?::| is set by)", msg)
        if key:
            loc = f"{loc}.{key.group(1)}"
            name = key.group(1)
            msg = msg.replace(f"unknown key '{name}':", "unknown key:", 1).replace(f"'{name}': ", "", 1)
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def _section_keys(loc: tuple) -> list[str]:
    """The keys the recipe section at `loc` takes (for "did you mean"); [] where the path leaves the schema."""
    cls: Any = Recipe
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None:
            return []
        cls = _model_class(field.annotation)
        if cls is None:
            return []
    return list(cls.model_fields)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The section class in a field's annotation (`KTOStage | None` -> KTOStage), if it has one."""
    return next((t for t in [annotation, *typing.get_args(annotation)]
                 if isinstance(t, type) and issubclass(t, BaseModel)), None)


def parse_recipe(tree: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(tree, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of sections, got {type(tree).__name__}")
    try:
        tree = resolve_references(tree)
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from None
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(_format_errors(err, source)) from None


def shipped_recipes() -> Path:
    """The folder of recipes that ship with align (recipes/ in a checkout, align/recipes in an install)."""
    from importlib import resources

    return Path(str(resources.files("align.recipes")))


def find_recipe(name: str | Path) -> Path:
    """A recipe file, or a shipped recipe by its name as `align ls` prints it (quickstart, recipes/quickstart.yaml,
    gpu/gpt2), so the commands work outside a checkout too."""
    path = Path(name)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts and path.parts[0] == "recipes" else path
    # not with_suffix: gpu/qwen2.5-0.5b-instruct has a dot in its name, and no suffix
    for candidate in (relative, relative.with_name(relative.name + ".yaml")):
        if (shipped_recipes() / candidate).is_file():
            return shipped_recipes() / candidate
    raise RecipeError(f"recipe file not found: {path} (nor a shipped recipe of that name; `align ls` lists them)")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = find_recipe(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if overrides:
        tree = apply_overrides(tree or {}, overrides)
        check_override_stages(tree, overrides, str(path))
    return parse_recipe(tree, str(path))


def check_override_stages(tree: dict, overrides: list[str], source: str) -> None:
    """Refuse overrides of a stage the recipe does not run: the recipe would silently ignore them (or, without the
    stage's section, fail on a field the user never meant to give)."""
    stages = tree.get("stages")
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        return  # the schema names what is wrong with the list itself
    problems = {}
    for item in overrides:
        section = item.split("=", 1)[0].strip().split(".")[0]
        if section in STAGES and section not in stages:
            problems.setdefault(section, []).append(item)
    lines = []
    for section, items in problems.items():
        suggested = sorted({*stages, section} & set(STAGE_ORDER), key=STAGE_ORDER.index)
        given = tree.get(section) if isinstance(tree.get(section), dict) else {}
        fields = _model_class(Recipe.model_fields[section].annotation).model_fields
        needs = "".join(f" {section}.{k}=..." for k, f in fields.items() if f.is_required() and k not in given)
        lines.append(f"{source}: override {', '.join(repr(i) for i in items)}: the recipe does not run stage "
                     f"'{section}' (its stages are [{', '.join(stages)}]). Add the stage on the command line with "
                     f"'stages=[{','.join(suggested)}]'{needs}, or to stages: in the YAML")
    if lines:
        raise RecipeError("\n".join(lines))


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe, defaults included, as written into every run directory."""
    data = recipe.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
