"""PPO against the reward model, the ChatGPT / InstructGPT method. trl 1.16 has no PPO trainer; this loop is ours.

One frozen base is loaded once (4-bit with QLoRA on GPU, float on CPU) and every role is a LoRA adapter on it:
  default    the policy, trainable, starting from the SFT adapter (fresh without an SFT stage)
  reference  a frozen copy of the SFT adapter; without an SFT stage the reference is the base, adapters disabled
  value      trainable adapter + scalar head, starting as a copy of the reward model (or fresh); it trains only
             with baseline: value
  reward     the reward stage's adapter + score head, frozen
A reward model with its own base and tokenizer (reward_model_path) is loaded beside it and scores decoded text.

`run` is the loop; each numbered step in it is a function below, in the same order: 1. rollout (sample responses
to a batch of prompts) -> 2. score them -> 3. old log-probs of policy and reference, and values -> 4. advantages
(per-token rewards with the KL penalty and the score on the last token; GAE against the value model, or with
baseline: prompt the score less the mean of the other answers to the same prompt) -> 5. update (ppo_epochs of clipped
updates in mini-batches) -> 6. log -> 7. stop check -> 8. checkpoint. The arithmetic is in arithmetic.py, the
checkpoint files in checkpoints.py. Under `accelerate launch` every process samples its own prompts and gradients
are averaged across processes (ranks.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from align.stages.ppo.checkpoints import load_checkpoint, newest_checkpoint, save_checkpoint
from align.config import ModelSection, PPOStage, Recipe
from align.data import DataError, load_prompts, token_ids
from align.generation import NonFiniteLogits, as_rollout, sample_responses
from align.models import (
    load_causal_lm, load_kwargs, load_tokenizer, lora_config, on_this_process_device, resolve_model_path, sync_special_tokens,
    torch_dtype,
)
from align.onpolicy import judge_scores
from align.stages.ppo.ranks import average_gradients, broadcast_from_main, gather_all, mean_over_processes
from align.reward_functions import call_reward_function, load_reward_function
from align.stages.ppo.arithmetic import (
    AdaptiveKLController, FixedKLController, RunningMoments, balance_openings, gae, leave_one_out, masked_mean,
    masked_whiten, per_token_rewards, policy_loss, token_logprobs, value_loss,
)
from align.runs import replace_dir, temp_dir_for, trim_log
from align.trainers import TrainingDiverged
from align.reward import AdapterHead, attach_reward_adapter, score_conversations
from align.reward.model import add_lora_adapter, reward_lora_on_causal_lm
from align.stages.reward import keep_starting_policy, untrusted_reward_model


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from accelerate import PartialState
    from tqdm.auto import tqdm
    from transformers import set_seed

    # --- config
    cfg = recipe.ppo
    state = PartialState()
    set_seed(recipe.seed)
    bf16 = torch_dtype(recipe.model.dtype) == torch.bfloat16
    autocast = lambda: torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    untrusted = untrusted_reward_model(recipe, "ppo", inputs)
    if untrusted:  # keep_start_if_untrusted: say so and stop, with the starting policy as the result
        return {"steps": 0, "stopped_early": None, **keep_starting_policy(recipe, "ppo", out, inputs, untrusted)}

    # --- data: prompts, checked before any model loads
    tokenizer = load_tokenizer(recipe.model)
    rows, prompt_ids = load_checked_prompts(cfg, tokenizer)
    opening_ids = [tokenizer.encode(opening, add_special_tokens=False) for opening in cfg.openings]

    # --- model: one base, the roles as adapters on it; what trains, and what scores
    model, value_model, reward_model, reward_tokenizer = load_roles(recipe, inputs, tokenizer)
    training = start_training(cfg, model, value_model, state)
    sources = RewardSources(
        model=reward_model, tokenizer=reward_tokenizer,
        functions=[(spec, load_reward_function(spec)) for spec in cfg.reward_functions],
        weights=cfg.reward_weights or [1.0] * (int(cfg.use_reward_model) + len(cfg.reward_functions)),
        columns=sorted({k for row in rows for k in row if k != "prompt"}),
        judges=recipe.eval.judges,  # watch only, whether or not an eval stage runs
    )

    # --- rollouts with vLLM when the recipe asks (trl's engine; the policy's LoRA is pushed to it each step)
    engine = None
    if cfg.use_vllm:
        from align.vllm_sampling import engine_settings, start_engine

        longest_prompt = max(len(ids) for ids in prompt_ids)
        engine = start_engine(training.model, tokenizer, engine_settings(
            cfg, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, longest_prompt + cfg.max_new_tokens,
            recipe.model.trust_remote_code))

    # --- experiment tracking (metrics.jsonl is always written; tensorboard beside it when asked)
    tensorboard = None
    if "tensorboard" in recipe.report_to and state.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(str(out / "tensorboard"))

    # --- resume from the newest checkpoint of an interrupted run
    start_step = resume(out, training, state)

    # --- train
    metrics, stopped, diverged = {}, None, False
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="ppo",
               disable=not state.is_main_process)
    for step in bar:
        started = time.time()
        prompts = prompt_indices(step, len(rows), cfg.rollout_batch_size // cfg.answers_per_prompt, recipe.seed,
                                 state.process_index, state.num_processes)
        indices = prompts * cfg.answers_per_prompt  # blocks: row r answers prompts[r % len(prompts)]
        batch = [rows[i] for i in indices]

        # 1. rollout: the policy answers this step's prompts, some continuing an opening
        openings = [opening_ids[k] if k is not None else [] for k in
                    opening_per_row(step, len(indices), len(opening_ids), cfg.opening_fraction)]
        try:
            answers = rollout(training.model, tokenizer, [prompt_ids[i] for i in indices], cfg, autocast, engine,
                              openings)
        except NonFiniteLogits:  # the policy has blown up
            stopped, diverged = f"the policy's next-token probabilities are not finite at step {step + 1}", True
            print(f"[ppo] stopping early: {stopped}")
            break
        # 2. score: reward model and/or functions, then EOS handling and normalisation; the gold judge watches
        scores = score(batch, answers, sources, training.moments, cfg, state, autocast)
        # 3. old log-probs of policy and reference, and values, before this step's update
        experience = old_logprobs_and_values(training, answers, cfg, autocast)
        # 4. advantages: per-token rewards (KL penalty, score on the last token), GAE or the prompt's other answers
        opened = torch.tensor([bool(o) for o in openings], device=scores.trained.device)
        kl, advantages, returns = estimate_advantages(experience, scores.trained, training.kl_controller.value, cfg,
                                                      opened)
        # 5. update: ppo_epochs passes of clipped policy and value updates
        stats = update(training, experience, advantages, returns, cfg, state, autocast)
        # 6. log; the KL coefficient adapts to the KL averaged over processes, and the next step uses it
        metrics = step_metrics(answers, scores, experience, kl, stats, training.kl_controller.value, state)
        training.kl_controller.update(metrics["kl"], cfg.rollout_batch_size * state.num_processes)
        metrics.update({"kl_coef": training.kl_controller.value, "learning_rate": training.scheduler.get_last_lr()[0],
                        "step_seconds": time.time() - started, "rollout_seconds": answers.seconds})
        if state.is_main_process:
            write_logs(out, step, metrics, batch, answers.texts, scores.raw, cfg, tensorboard)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3f}")
        # 7. stop check, before the checkpoint: a diverged step's weights must never be saved
        stopped, diverged = stop_check(metrics, training.policy_params + training.value_params, cfg.max_kl, step)
        if stopped:
            print(f"[ppo] stopping early: {stopped}")
            break
        # 8. checkpoint
        if (step + 1) % cfg.save_steps == 0 or step + 1 == cfg.steps:
            save_checkpoint(out, step + 1, training.model, training.value_model, training.optimizer,
                            training.scheduler, training.kl_controller, training.moments, state, cfg.save_total_limit)

    # --- save the policy adapter (the newest checkpoint's when stopped early)
    steps_done = step + 1 if metrics else start_step
    if stopped:
        steps_done = fall_back_to_checkpoint(out, training, stopped, diverged, steps_done, state)
    if tensorboard is not None:
        tensorboard.close()
    save_policy(out, training.model, tokenizer, state)
    return {**{f"final_{k}": v for k, v in metrics.items()}, "steps": steps_done,
            "prompts": len(rows), "stopped_early": stopped, "processes": state.num_processes}


# ------------------------------------------------------------------------------------------------ setup


def load_checked_prompts(cfg: PPOStage, tokenizer) -> tuple[list[dict], list[list[int]]]:
    """The prompt rows and their token ids; prompts over max_prompt_length are refused before any model loads."""
    rows, where = load_prompts(cfg.dataset)
    prompt_ids = [token_ids(tokenizer, row["prompt"], add_generation_prompt=True) for row in rows]
    too_long = [i + 1 for i, ids in enumerate(prompt_ids) if len(ids) > cfg.max_prompt_length]
    if too_long:
        raise DataError(f"{where}: rows {too_long[:5]} have prompts over ppo.max_prompt_length="
                        f"{cfg.max_prompt_length} tokens ({len(too_long)} in all); raise it or drop them")
    print(f"[ppo] {len(rows)} prompts from {where}")
    return rows, prompt_ids


@dataclass
class Training:
    """What the loop changes from step to step, and what a checkpoint holds."""

    model: torch.nn.Module  # the peft model: every role's adapter on the one base
    value_model: AdapterHead  # the value adapter and its scalar head
    policy_params: list[torch.Tensor]
    value_params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    kl_controller: FixedKLController | AdaptiveKLController
    moments: RunningMoments  # running score statistics, for reward_normalization: running


def start_training(cfg: PPOStage, model, value_model: AdapterHead, state) -> Training:
    policy_params = [p for n, p in model.named_parameters() if ".default." in n and "lora_" in n]
    value_params = [p for n, p in model.named_parameters() if ".value." in n and "lora_" in n]
    value_params += list(value_model.head.parameters())
    for p in policy_params + value_params:
        p.requires_grad_(True)
    broadcast_from_main(policy_params + value_params, state)  # every process starts from the same weights
    optimizer = torch.optim.AdamW(
        [{"params": policy_params, "lr": cfg.learning_rate}, {"params": value_params, "lr": cfg.value_learning_rate}],
        eps=1e-5,
    )
    schedule = (lambda s: 1.0) if cfg.lr_schedule == "constant" else (lambda s: max(0.0, 1.0 - s / cfg.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if cfg.kl_controller == "adaptive":
        kl_controller = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    else:
        kl_controller = FixedKLController(cfg.kl_coef)
    return Training(model, value_model, policy_params, value_params, optimizer, scheduler, kl_controller,
                    RunningMoments())


@dataclass
class RewardSources:
    """What scores a response: the reward model and/or reward functions, weighted and summed."""

    model: torch.nn.Module | None  # None without use_reward_model
    tokenizer: object  # the reward model's own (reward_model_path), else the policy's
    functions: list[tuple[str, Callable]]  # (spec, function)
    weights: list[float]  # the reward model's first when it is used, then each function's
    columns: list[str]  # the prompt rows' other fields, handed to reward functions and judges
    judges: list[str]  # gold judges: the first is logged as gold_mean, never trained on


def resume(out: Path, training: Training, state) -> int:
    """The step to start from: an interrupted run's newest checkpoint (loaded, its logs cut back to it), else 0."""
    checkpoint = newest_checkpoint(out)
    if checkpoint is None:
        return 0
    start_step = load_checkpoint(checkpoint, training.model, training.value_model, training.optimizer,
                                 training.scheduler, training.kl_controller, training.moments, state.process_index)
    if state.is_main_process:
        trim_log(out / "metrics.jsonl", start_step)
        trim_log(out / "samples.jsonl", start_step)
        print(f"[ppo] resuming from {checkpoint} at step {start_step}")
    state.wait_for_everyone()
    return start_step


# ------------------------------------------------------------------------------------------------ steps


@dataclass
class Rollout:
    """One sampled response per prompt: prompts left-padded, responses padded after their first EOS."""

    query: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor  # 1 up to and including the EOS
    ended: torch.Tensor  # the response has its EOS, not cut off at max_new_tokens
    texts: list[str]  # decoded, what the reward sources read
    seconds: float  # sampling time


def rollout(model, tokenizer, prompt_ids: list[list[int]], cfg: PPOStage, autocast: Callable,
            engine=None, openings: list[list[int]] | None = None) -> Rollout:
    """1. Sample with the policy adapter, in align's decode loop or with vLLM (`engine`). A row with opening ids
    continues them, and they are the start of its response: scored, trained on and logged as the policy's own
    tokens. Raises NonFiniteLogits when the policy has blown up."""
    started = time.time()
    model.set_adapter("default")
    device = next(model.parameters()).device
    if engine is not None:
        from align.vllm_sampling import sample_with_vllm

        completions = sample_with_vllm(engine, model, "default", prompt_ids)
        query, query_mask, responses, response_mask = as_rollout(
            prompt_ids, completions, tokenizer.pad_token_id, tokenizer.eos_token_id, device)
    else:
        openings = openings or [[] for _ in prompt_ids]
        with autocast():
            query, query_mask, responses, response_mask = sample_responses(
                model, [p + o for p, o in zip(prompt_ids, openings)], tokenizer.pad_token_id, tokenizer.eos_token_id,
                cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.rollout_cache,
            )
        if any(openings):  # the opening moves from the prompt to the front of the response
            continuations = [[t for t, m in zip(row, row_mask) if m]
                             for row, row_mask in zip(responses.tolist(), response_mask.tolist())]
            query, query_mask, responses, response_mask = as_rollout(
                prompt_ids, [o + c for o, c in zip(openings, continuations)], tokenizer.pad_token_id,
                tokenizer.eos_token_id, device)
    seconds = time.time() - started
    ended = (responses == tokenizer.eos_token_id).any(1) & (response_mask.sum(1) > 0)
    texts = [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip()
             for r, m in zip(responses, response_mask)]
    return Rollout(query, query_mask, responses, response_mask, ended, texts, seconds)


@dataclass
class Scores:
    raw: torch.Tensor  # the weighted sum of the reward sources, as logged
    trained: torch.Tensor  # after EOS handling, normalisation and clipping: what PPO optimises
    gold: list[float] | None  # the first gold judge's, when there is one


def score(batch: list[dict], answers: Rollout, sources: RewardSources, moments: RunningMoments, cfg: PPOStage,
          state, autocast: Callable) -> Scores:
    """2. The reward model and/or functions, weighted, then EOS handling and normalisation."""
    prompts = [row["prompt"] for row in batch]
    parts = []
    if sources.model is not None:
        conversations = [p + [{"role": "assistant", "content": t}] for p, t in zip(prompts, answers.texts)]
        with autocast():
            parts.append(score_conversations(sources.model, sources.tokenizer, conversations, cfg.mini_batch_size))
    columns = {k: [row.get(k) for row in batch] for k in sources.columns}
    for spec, function in sources.functions:
        parts.append(call_reward_function(function, spec, prompts, answers.texts, columns))
    raw = sum(w * torch.tensor(p, dtype=torch.float32) for w, p in zip(sources.weights, parts)).to(state.device)
    # the gold judge watches (logged beside the proxy reward, never trained on): reward hacking shows as a gap
    judges = sources.judges
    gold = judge_scores(judges[:1], prompts, answers.texts, columns).get(judges[0]) if judges else None
    scores = raw.clone()
    if cfg.missing_eos == "penalty":
        scores = torch.where(answers.ended, scores, scores - cfg.missing_eos_penalty)
    elif cfg.missing_eos == "zero":
        scores = torch.where(answers.ended, scores, torch.zeros_like(scores))
    if cfg.reward_normalization == "batch":
        scores = (scores - scores.mean()) / (scores.std() + 1e-8) if len(scores) > 1 else scores - scores.mean()
    elif cfg.reward_normalization == "running":
        moments.update(gather_all(scores, state))
        scores = (scores - moments.mean) / moments.std
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    return Scores(raw, scores, gold)


@dataclass
class Experience:
    """A rollout as the update reads it: whole sequences, and the policy, reference and value model before it."""

    sequences: torch.Tensor  # prompt then response
    attention: torch.Tensor
    responses: torch.Tensor
    context: int  # the padded prompt length: responses start here
    mask: torch.Tensor  # the response mask, as float
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor  # zero on padding


def old_logprobs_and_values(training: Training, answers: Rollout, cfg: PPOStage, autocast: Callable) -> Experience:
    """3. Log-probs of policy and reference, and values: no gradients, one mini-batch at a time."""
    sequences = torch.cat([answers.query, answers.responses], 1)
    attention = torch.cat([answers.query_mask, answers.response_mask], 1)
    context = answers.query.shape[1]
    mask = answers.response_mask.float()
    old_logprobs, ref_logprobs, old_values = [], [], []
    with torch.no_grad(), autocast():
        for chunk in chunks(len(sequences), cfg.mini_batch_size):
            args = (sequences[chunk], attention[chunk], answers.responses[chunk], context, cfg.temperature)
            old_logprobs.append(response_logprobs(training.model, "default", *args)[0])
            ref_logprobs.append(response_logprobs(training.model, "reference", *args)[0])
            if cfg.baseline == "value":
                old_values.append(response_values(training.value_model, sequences[chunk], attention[chunk], context))
            else:  # no value model: zero values make GAE below plain rewards-to-go
                old_values.append(torch.zeros_like(old_logprobs[-1]))
    return Experience(sequences, attention, answers.responses, context, mask, torch.cat(old_logprobs).float(),
                      torch.cat(ref_logprobs).float(), torch.cat(old_values).float() * mask)


def estimate_advantages(experience: Experience, scores: torch.Tensor, kl_coef: float, cfg: PPOStage,
                        opened: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4. (per-token KL to the reference, advantages, returns). With baseline: prompt a reward model's score counts
    only against the other answers to the same prompt: Bradley-Terry scores are comparable within a prompt, while
    their level differs between prompts (a right decline of a harmful request can score below a mediocre answer
    to a harmless question), and a batch-wide baseline would teach that level."""
    if cfg.baseline == "prompt":
        scores = leave_one_out(scores, cfg.answers_per_prompt)
        if cfg.balance_openings and opened is not None:  # opened: which rows continued an opening
            scores = balance_openings(scores, opened, cfg.answers_per_prompt)
    rewards, kl = per_token_rewards(scores, experience.old_logprobs, experience.ref_logprobs, experience.mask, kl_coef)
    lam = cfg.lam if cfg.baseline == "value" else 1.0  # without values, lambda < 1 would only discount the score
    advantages, returns = gae(rewards, experience.old_values, experience.mask, cfg.gamma, lam)
    if cfg.whiten_advantages:  # the prompt baseline has centred them already: scale only
        advantages = masked_whiten(advantages, experience.mask, shift_mean=cfg.baseline == "value")
    return kl, advantages, returns


def update(training: Training, experience: Experience, advantages: torch.Tensor, returns: torch.Tensor,
           cfg: PPOStage, state, autocast: Callable) -> list[dict]:
    """5. ppo_epochs passes over the rollout batch in shuffled mini-batches, then one scheduler step.
    Returns each mini-batch's losses and statistics."""
    e, params = experience, training.policy_params + training.value_params
    stats = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(len(e.sequences))
        for chunk_start in range(0, len(e.sequences), cfg.mini_batch_size):
            mb = order[chunk_start : chunk_start + cfg.mini_batch_size].to(state.device)
            with autocast():
                logprobs, entropy = response_logprobs(training.model, "default", e.sequences[mb], e.attention[mb],
                                                      e.responses[mb], e.context, cfg.temperature, with_entropy=True)
                pg_loss, pg_stats = policy_loss(logprobs.float(), e.old_logprobs[mb], advantages[mb], e.mask[mb],
                                                cfg.clip_range)
            pg_loss.backward()
            vf_stats = {}
            if cfg.baseline == "value":
                with autocast():
                    values = response_values(training.value_model, e.sequences[mb], e.attention[mb], e.context).float()
                    vf_loss, vf_stats = value_loss(values, e.old_values[mb], returns[mb], e.mask[mb],
                                                   cfg.value_clip_range)
                vf_loss.backward()
                vf_stats = {"value_loss": vf_loss.item(), **vf_stats}
            average_gradients(params, state)
            torch.nn.utils.clip_grad_norm_(training.policy_params, cfg.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(training.value_params, cfg.max_grad_norm)
            training.optimizer.step()
            training.optimizer.zero_grad(set_to_none=True)
            stats.append({"policy_loss": pg_loss.item(), "entropy": masked_mean(entropy.float(), e.mask[mb]).item(),
                          **pg_stats, **vf_stats})
    training.scheduler.step()
    return stats


def step_metrics(answers: Rollout, scores: Scores, experience: Experience, kl: torch.Tensor, stats: list[dict],
                 kl_coef: float, state) -> dict:
    """6. The step's metrics, averaged over processes; kl_coef is the one this step's rewards were computed with."""
    sequence_kl, mask = kl.sum(1), experience.mask
    local = {
        "reward_mean": scores.raw.mean().item(),
        "reward_std": scores.raw.std().item() if len(scores.raw) > 1 else 0.0,
        "score_mean": scores.trained.mean().item(),
        "kl": sequence_kl.mean().item(),
        "non_score_reward": (-kl_coef * sequence_kl).mean().item(),
        "response_length": mask.sum(1).mean().item(),
        "eos_fraction": answers.ended.float().mean().item(),
        **({"value_mean": masked_mean(experience.old_values, mask).item()} if "value_loss" in stats[0] else {}),
        "rollout_tokens_per_second": mask.sum().item() / max(answers.seconds, 1e-9),
        **({"gold_mean": sum(scores.gold) / len(scores.gold)} if scores.gold is not None else {}),
        **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]},
    }
    return mean_over_processes(local, state)


def write_logs(out: Path, step: int, metrics: dict, batch: list[dict], texts: list[str], raw_scores: torch.Tensor,
               cfg: PPOStage, tensorboard) -> None:
    """6. metrics.jsonl (and tensorboard) every step; two example rollouts to samples.jsonl every sample_every."""
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": step + 1, **metrics}) + "\n")
    if tensorboard is not None:
        for key, value in metrics.items():
            tensorboard.add_scalar(f"ppo/{key}", value, step + 1)
    if step % cfg.sample_every == 0 or step + 1 == cfg.steps:
        prompts = [row["prompt"] for row in batch]
        with (out / "samples.jsonl").open("a") as fh:
            for prompt, text, score in list(zip(prompts, texts, raw_scores.tolist()))[:2]:
                fh.write(json.dumps({"step": step + 1, "prompt": prompt, "response": text, "score": score}) + "\n")


def stop_check(metrics: dict, params: list[torch.Tensor], max_kl: float | None, step: int) -> tuple[str | None, bool]:
    """7. (why to stop after this step or None, whether that is divergence): the numbers stopped being numbers,
    or the policy ran away from the reference."""
    broken = [k for k in ("reward_mean", "kl", "policy_loss", "value_loss") if k in metrics
              and not math.isfinite(metrics[k])]
    if not torch.stack([torch.isfinite(p).all() for p in params]).all():  # one sync
        broken.append("adapter weights")  # never checkpoint weights that are already NaN/inf
    if broken:
        return f"{', '.join(broken)} not finite at step {step + 1}", True
    if max_kl is not None and metrics["kl"] > max_kl:
        return f"KL {metrics['kl']:.2f} exceeded ppo.max_kl={max_kl} at step {step + 1}", False
    return None, False


# ------------------------------------------------------------------------------------------------ the end


def fall_back_to_checkpoint(out: Path, training: Training, stopped: str, diverged: bool, steps_done: int,
                            state) -> int:
    """After an early stop, the newest checkpoint's policy and its step count. Without one, the policy as it
    stopped, unless it diverged: then there is no good policy to keep."""
    last = newest_checkpoint(out)
    if last is not None:
        steps_done = load_checkpoint(last, training.model, training.value_model, training.optimizer,
                                     training.scheduler, training.kl_controller, training.moments, state.process_index)
        print(f"[ppo] keeping the policy of {last}")
    elif diverged:
        raise TrainingDiverged(f"ppo: {stopped}; no checkpoint was saved before it, so there is no good policy "
                               "to keep. Lower ppo.learning_rate or max_grad_norm and run again.")
    else:
        print("[ppo] no checkpoint before the stop: keeping the policy as it was when it stopped")
    return steps_done


def save_policy(out: Path, model, tokenizer, state) -> None:
    """The policy adapter alone (the other roles are this stage's own), with the tokenizer, in out/adapter."""
    if state.is_main_process:
        tmp = temp_dir_for(out / "adapter")
        model.save_pretrained(tmp, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out / "adapter")
    state.wait_for_everyone()

# ------------------------------------------------------------------------------------------------ roles


def load_roles(recipe: Recipe, inputs: dict, tokenizer):
    """The shared base with its adapters; returns (peft model, value head, reward scorer, reward tokenizer)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.utils import disable_dropout_in_model

    cfg = recipe.ppo
    path = resolve_model_path(recipe.model.name_or_path)
    kwargs = load_kwargs(recipe.model, recipe.quantization)
    base = on_this_process_device(load_causal_lm(path, **kwargs))
    if recipe.quantization.load_in_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    start = recipe.starting_policy("ppo")
    if start is not None:
        model = PeftModel.from_pretrained(base, str(inputs[start] / "adapter"), is_trainable=True)
        model.load_adapter(str(inputs[start] / "adapter"), adapter_name="reference", is_trainable=False)
    else:
        model = get_peft_model(base, lora_config(recipe.lora, "CAUSAL_LM"))
    sync_special_tokens(model, tokenizer)
    # Train mode (gradient checkpointing acts only there) with every dropout off: old and new log-probs must agree.
    disable_dropout_in_model(model)
    model.train()

    hidden = model.get_base_model().config.get_text_config().hidden_size
    device = next(model.parameters()).device
    reward_model, reward_tokenizer, reward_lora = None, tokenizer, None
    if cfg.use_reward_model and cfg.reward_model_path is None:
        head, reward_lora = attach_reward_adapter(model, inputs["reward"] / "adapter", "reward")
        reward_model = AdapterHead(model, "reward", head, tokenizer.pad_token_id, trainable=False)
    elif cfg.use_reward_model:
        # A reward model on another base: its own tokenizer; it only ever sees decoded text.
        reward_tokenizer = load_tokenizer(ModelSection(name_or_path=cfg.reward_model_path))
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(cfg.reward_model_path), num_labels=1, dtype=kwargs["dtype"]
        ).to(device).eval()
        reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
        reward_model.requires_grad_(False)

    if cfg.value_init == "reward" and reward_lora is not None:
        config = reward_lora_on_causal_lm(inputs["reward"] / "adapter", trainable=True)
        add_lora_adapter(model, "value", config, reward_lora, "value adapter")
        head = copy.deepcopy(reward_model.head)
    else:
        model.add_adapter("value", lora_config(recipe.lora, "CAUSAL_LM"))
        head = torch.nn.Linear(hidden, 1, device=device, dtype=torch.float32)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    value_model = AdapterHead(model, "value", head, tokenizer.pad_token_id, trainable=True)
    return model, value_model, reward_model, reward_tokenizer


def use_adapter(model, name: str):
    """Activate one role; 'reference' without a reference adapter means the base with adapters disabled."""
    if name == "reference" and "reference" not in model.peft_config:
        return model.disable_adapter()
    model.set_adapter(name, inference_mode=name != "default")
    return contextlib.nullcontext()


def position_ids(attention: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as generate counts them under left padding."""
    return (attention.cumsum(1) - 1).clamp(min=0)


def response_logprobs(model, adapter: str, sequences, attention, responses, context: int, temperature: float,
                      with_entropy: bool = False):
    """log p(response token) under one role, from the hidden states that predict each response token."""
    with use_adapter(model, adapter):
        # The model's own forward, so any final logit processing (soft-capping, scaling) is the one generate saw;
        # logits_to_keep computes the LM head only at the positions that predict response tokens.
        steps = sequences.shape[1] - context
        logits = model(input_ids=sequences, attention_mask=attention, position_ids=position_ids(attention),
                       logits_to_keep=steps + 1, use_cache=False).logits[:, :-1] / temperature
    return token_logprobs(logits, responses, with_entropy)


def response_values(value_model: AdapterHead, sequences, attention, context: int) -> torch.Tensor:
    """V(state before each response token)."""
    return value_model.values(sequences, attention, position_ids(attention))[:, context - 1 : -1]


# ------------------------------------------------------------------------------------------------ batches


def chunks(size: int, chunk: int):
    return [slice(i, i + chunk) for i in range(0, size, chunk)]


def opening_per_row(step: int, batch: int, openings: int, fraction: float) -> list[int | None]:
    """Which opening each of a step's rollouts starts from (None: the policy's own answer): the first
    round(fraction * batch) rows, at least one, the openings taking turns across steps. The rows' prompts are a
    seeded shuffle (prompt_indices), so which prompts are opened varies; a pure function of the step, so a resumed
    run opens the same ones."""
    if not openings:
        return [None] * batch
    count = min(batch, max(1, round(fraction * batch)))
    return [(step * count + row) % openings if row < count else None for row in range(batch)]


def prompt_indices(step: int, rows: int, batch: int, seed: int, rank: int, world: int) -> list[int]:
    """The prompts process `rank` answers at `step`: a seeded shuffle per pass over the data, dealt out in order.
    A pure function of the step, so a resumed run continues with exactly the prompts it would have seen."""
    per_step = batch * world
    orders: dict[int, list[int]] = {}
    out = []
    for position in range(step * per_step + rank * batch, step * per_step + (rank + 1) * batch):
        epoch, index = divmod(position, rows)
        if epoch not in orders:
            orders[epoch] = torch.randperm(rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(orders[epoch][index])
    return out

