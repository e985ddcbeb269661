"""PPO against the reward model, the ChatGPT / InstructGPT method. trl 1.16 has no PPO trainer; this loop is ours.

One frozen base is loaded once (4-bit with QLoRA on GPU, float on CPU) and every role is a LoRA adapter on it:
  default    the policy, trainable, starting from the SFT adapter (fresh without an SFT stage)
  reference  a frozen copy of the SFT adapter; without an SFT stage the reference is the base, adapters disabled
  value      trainable adapter + scalar head, starting as a copy of the reward model (or fresh)
  reward     the reward stage's adapter + score head, frozen
A reward model with its own base and tokenizer (reward_model_path) is loaded beside it and scores decoded text.

Each step: sample responses to a batch of prompts -> score them -> log-probs of policy and reference and values
-> per-token rewards (KL penalty, score on the last token) -> GAE -> ppo_epochs of clipped updates in mini-batches.
Under `accelerate launch` every process samples its own prompts and gradients are averaged across processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from align.config import ModelSection, Recipe
from align.data import DataError, load_prompts, token_ids
from align.generation import NonFiniteLogits, sample_responses
from align.models import (
    load_kwargs, load_tokenizer, lora_config, on_this_process_device, resolve_model_path, sync_special_tokens,
    torch_dtype,
)
from align.onpolicy import judge_scores
from align.reward_functions import call_reward_function, load_reward_function
from align.rl import (
    AdaptiveKLController, FixedKLController, RunningMoments, gae, masked_mean, masked_whiten,
    per_token_rewards, policy_loss, token_logprobs, value_loss,
)
from align.runs import TrainingDiverged, replace_dir, temp_dir_for, trim_log, write_json_atomic
from reward import AdapterHead, attach_reward_adapter, score_conversations
from reward.model import add_lora_adapter, reward_lora_on_causal_lm


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

    # --- data: prompts, checked before any model loads
    tokenizer = load_tokenizer(recipe.model)
    rows, where = load_prompts(cfg.dataset)
    prompt_ids = [token_ids(tokenizer, row["prompt"], add_generation_prompt=True) for row in rows]
    too_long = [i + 1 for i, ids in enumerate(prompt_ids) if len(ids) > cfg.max_prompt_length]
    if too_long:
        raise DataError(f"{where}: rows {too_long[:5]} have prompts over ppo.max_prompt_length="
                        f"{cfg.max_prompt_length} tokens ({len(too_long)} in all); raise it or drop them")
    columns = {k: [row.get(k) for row in rows] for k in {k for row in rows for k in row if k != "prompt"}}
    reward_functions = [(spec, load_reward_function(spec)) for spec in cfg.reward_functions]
    judges = recipe.eval.judges  # watch only, whether or not an eval stage runs
    weights = cfg.reward_weights or [1.0] * (int(cfg.use_reward_model) + len(reward_functions))
    print(f"[ppo] {len(rows)} prompts from {where}")

    # --- model: one base, the roles as adapters on it
    model, value_model, reward_model, reward_tokenizer = load_roles(recipe, inputs, tokenizer)
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
    moments = RunningMoments()

    # --- experiment tracking (metrics.jsonl is always written; tensorboard beside it when asked)
    tensorboard = None
    if "tensorboard" in recipe.report_to and state.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(str(out / "tensorboard"))

    # --- resume from the newest checkpoint of an interrupted run
    start_step = 0
    checkpoint = newest_checkpoint(out)
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, model, value_model, optimizer, scheduler, kl_controller, moments,
                                     state.process_index)
        if state.is_main_process:
            trim_log(out / "metrics.jsonl", start_step)
            trim_log(out / "samples.jsonl", start_step)
            print(f"[ppo] resuming from {checkpoint} at step {start_step}")
        state.wait_for_everyone()

    # --- train
    metrics, stopped, diverged = {}, None, False
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="ppo",
               disable=not state.is_main_process)
    for step in bar:
        started = time.time()
        indices = prompt_indices(step, len(rows), cfg.rollout_batch_size, recipe.seed, state.process_index,
                                 state.num_processes)
        batch, batch_ids = [rows[i] for i in indices], [prompt_ids[i] for i in indices]

        # rollout: sample with the policy adapter
        model.set_adapter("default")
        try:
            with autocast():
                query, query_mask, responses, response_mask = sample_responses(
                    model, batch_ids, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.max_new_tokens,
                    cfg.temperature, cfg.top_k, cfg.top_p, cfg.rollout_cache,
                )
        except NonFiniteLogits:  # the policy has blown up
            stopped, diverged = f"the policy's next-token probabilities are not finite at step {step + 1}", True
            print(f"[ppo] stopping early: {stopped}")
            break
        rollout_seconds = time.time() - started
        ended = (responses == tokenizer.eos_token_id).any(1) & (response_mask.sum(1) > 0)
        texts = [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(responses, response_mask)]

        # score: the reward model and/or functions, weighted, then EOS handling and normalisation
        prompts = [row["prompt"] for row in batch]
        parts = []
        if cfg.use_reward_model:
            conversations = [p + [{"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]
            with autocast():
                parts.append(score_conversations(reward_model, reward_tokenizer, conversations, cfg.mini_batch_size))
        batch_columns = {k: [row.get(k) for row in batch] for k in columns}
        for spec, function in reward_functions:
            parts.append(call_reward_function(function, spec, prompts, texts, batch_columns))
        raw_scores = sum(w * torch.tensor(p, dtype=torch.float32) for w, p in zip(weights, parts)).to(state.device)
        # the gold judge watches (logged beside the proxy reward, never trained on): reward hacking shows as a gap
        gold = judge_scores(judges[:1], prompts, texts, batch_columns).get(judges[0]) if judges else None
        scores = raw_scores.clone()
        if cfg.missing_eos == "penalty":
            scores = torch.where(ended, scores, scores - cfg.missing_eos_penalty)
        elif cfg.missing_eos == "zero":
            scores = torch.where(ended, scores, torch.zeros_like(scores))
        if cfg.reward_normalization == "batch":
            scores = (scores - scores.mean()) / (scores.std() + 1e-8) if len(scores) > 1 else scores - scores.mean()
        elif cfg.reward_normalization == "running":
            moments.update(gather_all(scores, state))
            scores = (scores - moments.mean) / moments.std
        if cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)

        # log-probs of policy and reference, values: no gradients, one mini-batch at a time
        sequences = torch.cat([query, responses], 1)
        attention = torch.cat([query_mask, response_mask], 1)
        context = query.shape[1]
        mask = response_mask.float()
        old_logprobs, ref_logprobs, old_values = [], [], []
        with torch.no_grad(), autocast():
            for chunk in chunks(len(batch), cfg.mini_batch_size):
                args = (sequences[chunk], attention[chunk], responses[chunk], context, cfg.temperature)
                old_logprobs.append(response_logprobs(model, "default", *args)[0])
                ref_logprobs.append(response_logprobs(model, "reference", *args)[0])
                old_values.append(response_values(value_model, sequences[chunk], attention[chunk], context))
        old_logprobs, ref_logprobs = torch.cat(old_logprobs).float(), torch.cat(ref_logprobs).float()
        old_values = torch.cat(old_values).float() * mask

        # per-token rewards and advantages
        rewards, kl = per_token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_controller.value)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # optimise: ppo_epochs passes over the rollout batch in shuffled mini-batches
        stats = []
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(batch))
            for chunk_start in range(0, len(batch), cfg.mini_batch_size):
                mb = order[chunk_start : chunk_start + cfg.mini_batch_size].to(state.device)
                with autocast():
                    logprobs, entropy = response_logprobs(model, "default", sequences[mb], attention[mb],
                                                          responses[mb], context, cfg.temperature, with_entropy=True)
                    pg_loss, pg_stats = policy_loss(logprobs.float(), old_logprobs[mb], advantages[mb], mask[mb],
                                                    cfg.clip_range)
                pg_loss.backward()
                with autocast():
                    values = response_values(value_model, sequences[mb], attention[mb], context).float()
                    vf_loss, vf_stats = value_loss(values, old_values[mb], returns[mb], mask[mb],
                                                   cfg.value_clip_range)
                vf_loss.backward()
                average_gradients(policy_params + value_params, state)
                torch.nn.utils.clip_grad_norm_(policy_params, cfg.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(value_params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                stats.append({"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                              "entropy": masked_mean(entropy.float(), mask[mb]).item(), **pg_stats, **vf_stats})
        scheduler.step()

        # metrics, averaged over processes
        sequence_kl = kl.sum(1)
        local = {
            "reward_mean": raw_scores.mean().item(),
            "reward_std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
            "score_mean": scores.mean().item(),
            "kl": sequence_kl.mean().item(),
            "non_score_reward": (-kl_controller.value * sequence_kl).mean().item(),
            "response_length": mask.sum(1).mean().item(),
            "eos_fraction": ended.float().mean().item(),
            "value_mean": masked_mean(old_values, mask).item(),
            "rollout_tokens_per_second": mask.sum().item() / max(rollout_seconds, 1e-9),
            **({"gold_mean": sum(gold) / len(gold)} if gold is not None else {}),
            **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]},
        }
        metrics = mean_over_processes(local, state)
        kl_controller.update(metrics["kl"], cfg.rollout_batch_size * state.num_processes)
        metrics.update({"kl_coef": kl_controller.value, "learning_rate": scheduler.get_last_lr()[0],
                        "step_seconds": time.time() - started, "rollout_seconds": rollout_seconds})
        if state.is_main_process:
            with (out / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": step + 1, **metrics}) + "\n")
            if tensorboard is not None:
                for key, value in metrics.items():
                    tensorboard.add_scalar(f"ppo/{key}", value, step + 1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3f}")
            if step % cfg.sample_every == 0 or step + 1 == cfg.steps:
                with (out / "samples.jsonl").open("a") as fh:
                    for prompt, text, score in list(zip(prompts, texts, raw_scores.tolist()))[:2]:
                        fh.write(json.dumps({"step": step + 1, "prompt": prompt, "response": text,
                                             "score": score}) + "\n")

        # checkpoint; stop when the policy runs away from the reference or the numbers stop being numbers
        broken = [k for k in ("reward_mean", "kl", "policy_loss", "value_loss") if not math.isfinite(metrics[k])]
        if not torch.stack([torch.isfinite(p).all() for p in policy_params + value_params]).all():  # one sync
            broken.append("adapter weights")  # never checkpoint weights that are already NaN/inf
        if broken:
            stopped = f"{', '.join(broken)} not finite at step {step + 1}"
            diverged = True
        elif cfg.max_kl is not None and metrics["kl"] > cfg.max_kl:
            stopped = f"KL {metrics['kl']:.2f} exceeded ppo.max_kl={cfg.max_kl} at step {step + 1}"
        if stopped:
            print(f"[ppo] stopping early: {stopped}")
            break
        if (step + 1) % cfg.save_steps == 0 or step + 1 == cfg.steps:
            save_checkpoint(out, step + 1, model, value_model, optimizer, scheduler, kl_controller, moments, state,
                            cfg.save_total_limit)

    # --- save the policy adapter (the newest checkpoint's when stopped early)
    steps_done = step + 1 if metrics else start_step
    if stopped:
        last = newest_checkpoint(out)
        if last is not None:
            steps_done = load_checkpoint(last, model, value_model, optimizer, scheduler, kl_controller, moments,
                                         state.process_index)
            print(f"[ppo] keeping the policy of {last}")
        elif diverged:
            raise TrainingDiverged(f"ppo: {stopped}; no checkpoint was saved before it, so there is no good policy "
                                   "to keep. Lower ppo.learning_rate or max_grad_norm and run again.")
        else:
            print("[ppo] no checkpoint before the stop: keeping the policy as it was when it stopped")
    if tensorboard is not None:
        tensorboard.close()
    if state.is_main_process:
        tmp = temp_dir_for(out / "adapter")
        model.save_pretrained(tmp, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out / "adapter")
    state.wait_for_everyone()
    return {**{f"final_{k}": v for k, v in metrics.items()}, "steps": steps_done,
            "prompts": len(rows), "stopped_early": stopped, "processes": state.num_processes}


# ------------------------------------------------------------------------------------------------ roles


def load_roles(recipe: Recipe, inputs: dict, tokenizer):
    """The shared base with its adapters; returns (peft model, value head, reward scorer, reward tokenizer)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.trainer.utils import disable_dropout_in_model

    cfg = recipe.ppo
    path = resolve_model_path(recipe.model.name_or_path)
    kwargs = load_kwargs(recipe.model, recipe.quantization)
    base = on_this_process_device(AutoModelForCausalLM.from_pretrained(path, **kwargs))
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


def average_gradients(params: list[torch.Tensor], state) -> None:
    """Mean of every process's gradients (LoRA and heads are small: one flat all-reduce)."""
    if state.num_processes == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= state.num_processes
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype)
        offset += g.numel()


def broadcast_from_main(params: list[torch.Tensor], state) -> None:
    if state.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def mean_over_processes(values: dict, state) -> dict:
    if state.num_processes == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=state.device)
    dist.all_reduce(tensor)
    return {k: v / state.num_processes for k, v in zip(keys, tensor.tolist())}


def gather_all(values: torch.Tensor, state) -> torch.Tensor:
    if state.num_processes == 1:
        return values
    import torch.distributed as dist

    parts = [torch.zeros_like(values) for _ in range(state.num_processes)]
    dist.all_gather(parts, values)
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------------ checkpoints
# checkpoints/step-N/ holds state.pt (adapters, value head, optimiser, scheduler, KL controller, reward moments,
# step) and rng-<rank>.pt per process; it is written under a temporary name and renamed, so it is whole or absent.


def newest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    found = [p for p in found if (p / "state.pt").is_file()]
    return found[-1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(out: Path, step: int, model, value_model, optimizer, scheduler, kl_controller, moments,
                    state, keep: int) -> None:
    from peft import get_peft_model_state_dict

    target = out / "checkpoints" / f"step-{step}"
    tmp = target.with_name(f".{target.name}.tmp")
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{state.process_index}.pt")
    if state.is_main_process:
        torch.save({
            "step": step,
            "policy": get_peft_model_state_dict(model, adapter_name="default"),
            "value_adapter": get_peft_model_state_dict(model, adapter_name="value"),
            "value_head": value_model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "kl_controller": kl_controller.state_dict(),
            "reward_moments": moments.state_dict(),
        }, tmp / "state.pt")
    state.wait_for_everyone()
    if state.is_main_process:
        replace_dir(tmp, target)
        for old in sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old)
        write_json_atomic(out / "checkpoints" / "latest.json", {"step": step, "path": str(target)})
    state.wait_for_everyone()


def load_checkpoint(path: Path, model, value_model, optimizer, scheduler, kl_controller, moments, rank: int) -> int:
    from peft import set_peft_model_state_dict

    saved = torch.load(path / "state.pt", map_location=next(model.parameters()).device, weights_only=False)
    set_peft_model_state_dict(model, saved["policy"], adapter_name="default")
    set_peft_model_state_dict(model, saved["value_adapter"], adapter_name="value")
    value_model.head.load_state_dict(saved["value_head"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    kl_controller.load_state_dict(saved["kl_controller"])
    moments.load_state_dict(saved["reward_moments"])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():  # absent when resumed with more processes than saved: those continue unseeded
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return saved["step"]

