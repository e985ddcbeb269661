"""On-policy preference rounds (iterative / online DPO, Guo et al. 2024; Pang et al. 2024).

Round r: the current policy writes `samples_per_prompt` candidate answers to `prompts_per_round` training
prompts (its greedy answer and samples from align's own decode loop), plus one continuing each of `openings` (a
reply it seldom gives unprompted, such as a decline, so the reward model can pick it where it is right and reject
it where it is not); the reward model and/or reward functions score them; each prompt's best and worst answers
become a pair (ties and near-identical texts dropped); trl's DPOTrainer trains on the pairs, with an NLL
term on the chosen answer (RPO: loss_type [sigmoid, sft]) so the chosen answers' likelihood does not sink. The
reference of round r is the policy at its start (trl's frozen copy of the adapter); KL is measured against the
policy the stage started from (the SFT model in the quickstart).

After the last round one more sampling pass measures the final policy, so the log has a point for every policy
the stage produced: reward (the proxy it optimised), the first gold judge's score when eval.judges are given
(logged only, never trained on), and KL. A round that finished is skipped on re-run (round-N/round.json).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

from align.config import Recipe, RecipeError
from align.data import check_lengths, load_prompts, to_dataset, token_ids
from align.generation import generate_answers, sample_answers
from align.models import (
    load_kwargs, load_policy, load_sampler, load_tokenizer, on_this_process_device, resolve_model_path,
    sync_special_tokens,
)
from align.onpolicy import (
    BALANCED, balance_by_openings, build_pairs, flatten, judge_scores, opening_pairs, proxy_scores, regroup,
)
from align.resources import release_memory
from align.runs import read_jsonl, write_json_atomic, write_text_atomic
from align.trainers import add_lengths, last_checkpoint, save_adapter, trainer_callbacks
from align.trainer_settings import record_trl_config, trainer_args, trl_args
from align.reward import load_reward_model
from align.stages.reward import keep_starting_policy, untrusted_reward_model

# A chosen answer's mean log-prob falling by more than this over a round is likelihood displacement (Razin et al.
# 2024): DPO widens the margin by pushing both answers down, and mass leaks to answers it never saw.
DISPLACEMENT_NATS = 0.5


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from accelerate import PartialState
    from transformers import set_seed

    # --- config
    cfg = recipe.online_dpo
    state = PartialState()
    set_seed(recipe.seed)
    judges = recipe.eval.judges  # watch only, whether or not an eval stage runs
    untrusted = untrusted_reward_model(recipe, "online_dpo", inputs)
    if untrusted:  # keep_start_if_untrusted: say so and stop, with the starting policy as the result
        return {"rounds": 0, "pairs": 0, **keep_starting_policy(recipe, "online_dpo", out, inputs, untrusted)}

    # --- data: prompts (and the columns reward functions and judges read), checked before any model loads
    tokenizer = load_tokenizer(recipe.model)
    rows, where = load_prompts(cfg.dataset)
    max_length = trl_args(recipe, "online_dpo", out).max_length
    if max_length is not None:
        long = [i + 1 for i, r in enumerate(rows)
                if len(token_ids(tokenizer, r["prompt"], add_generation_prompt=True)) + cfg.max_new_tokens > max_length]
        if long:
            raise RecipeError(f"online_dpo: rows {long[:5]} of {where} ({len(long)} in all) leave no room for "
                              f"max_new_tokens={cfg.max_new_tokens} within max_length={max_length}")
    opened = f" + {len(cfg.openings)} opened" if cfg.openings else ""
    print(f"[online_dpo] {len(rows)} prompts from {where}; {cfg.rounds} rounds of {cfg.prompts_per_round} prompts "
          f"x {cfg.samples_per_prompt} samples{opened}" + (f"; gold judge (logged only): {judges[0]}" if judges else ""))

    # --- models: policy and reward model reloaded each round from the adapters the last round saved
    path = resolve_model_path(recipe.model.name_or_path)
    reward_adapter = inputs["reward"] / "adapter" if cfg.use_reward_model else None
    start = recipe.starting_policy("online_dpo")
    start_adapter = inputs[start] / "adapter" if start else None
    adapter = start_adapter
    order = list(range(len(rows)))
    random.Random(recipe.seed).shuffle(order)

    labels_from = label_database(recipe, out)  # where people or the labeller judge each round's pairs, if anywhere
    log = []
    engine = None  # vLLM's, started by the first round that samples (use_vllm), kept for the later rounds
    for number in range(1, cfg.rounds + 2):  # the extra pass only measures the final policy
        round_dir = out / f"round-{number}"
        if (round_dir / "round.json").is_file():
            record = json.loads((round_dir / "round.json").read_text())
            log.append(record["log"])
            adapter = round_dir / "adapter" if (round_dir / "adapter").is_dir() else adapter
            if (round_dir / "reward_adapter").is_dir():
                reward_adapter = round_dir / "reward_adapter"
            print(f"[online_dpo] round {number} finished earlier (skipped)")
            continue
        round_dir.mkdir(parents=True, exist_ok=True)
        measuring_only = number == cfg.rounds + 1
        set_seed(recipe.seed + number)  # each round samples the same whether or not earlier rounds were skipped
        policy = None  # loaded after sampling, or for training on saved pairs
        if (round_dir / "pairs.json").is_file():  # interrupted while training: resume on the same pairs
            saved = json.loads((round_dir / "pairs.json").read_text())
            entry, pairs = saved["log"], saved["pairs"]
            print(f"[online_dpo] round {number}: resuming training on its {len(pairs)} saved pairs")
        elif labels_from and (round_dir / "queued.json").is_file() and not measuring_only:
            entry, pairs = labelled_pairs(recipe, round_dir, labels_from, number)  # the labels given since the last run
        else:
            # 1. sample: the current policy answers this round's prompts
            # the same prompts every round (as Pang et al.'s iterations): fresh answers each time, and the log's
            # rewards and gold scores compare policies, not prompt sets
            batch = [rows[order[i % len(rows)]] for i in range(cfg.prompts_per_round)]
            started = time.time()
            prompts = [r["prompt"] for r in batch]
            if cfg.use_vllm:
                engine, samples = sample_round_with_vllm(recipe, engine, adapter, tokenizer, prompts)
            else:
                sampler = load_sampler(recipe, adapter)
                samples = sample_answers(sampler, tokenizer, prompts, cfg.samples_per_prompt - cfg.include_greedy,
                                         cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, progress=True,
                                         openings=cfg.openings)
                if cfg.include_greedy:
                    greedy = generate_answers(sampler, tokenizer, prompts, cfg.max_new_tokens, 64)
                    samples = [[first, *rest] for first, rest in zip(greedy, samples)]
                del sampler
                release_memory()  # the sampler's weights and decode buffers, before the policy loads
            seconds = {"sample": time.time() - started}
            policy = on_this_process_device(load_policy(recipe, adapter_dir=adapter, trainable=not measuring_only))
            sync_special_tokens(policy, tokenizer)
            policy.eval()

            # 2. score: the proxy that trains (the reward model first learns this round's answers when relabelling);
            # the gold judge that only watches
            started = time.time()
            relabelled = {}
            if cfg.relabel_with and not measuring_only:
                reward_adapter, relabelled = refresh_reward_model(recipe, round_dir, tokenizer, batch, samples,
                                                                  reward_adapter)
                seconds["relabel"] = time.time() - started
                started = time.time()
            reward_model = None
            if reward_adapter is not None:
                reward_model = on_this_process_device(load_reward_model(
                    path, load_kwargs(recipe.model, recipe.quantization), tokenizer.pad_token_id,
                    adapter_dir=reward_adapter, trainable=False))
            scores = proxy_scores(reward_model, tokenizer, batch, samples, cfg.reward_functions, cfg.reward_weights,
                                  cfg.missing_eos_penalty)
            del reward_model
            seconds["score"] = time.time() - started
            started = time.time()
            kl = kl_to_start(policy, start_adapter, tokenizer, batch, samples, cfg.kl_samples)
            seconds["kl"] = time.time() - started
            entry = {"step": number - 1, "policy": "start" if number == 1 else f"round-{number - 1}",
                     "reward_mean": mean([s for group in scores for s in group]), "kl": mean(kl),
                     "answer_tokens": mean([a["tokens"] for group in samples for a in group]),
                     "eos_rate": mean([float(a["ended_with_eos"]) for group in samples for a in group]),
                     **relabelled, **{f"seconds_{k}": round(v, 1) for k, v in seconds.items()}}
            if judges:
                prompts, texts, columns = flatten(batch, samples)
                entry["gold_mean"] = mean(judge_scores(judges[:1], prompts, texts, columns)[judges[0]])

            # 3. pair: best vs worst per prompt; with a label database people (or the labeller) pick between the
            # two instead, and balancing by openings waits for their labels
            gap = -math.inf if labels_from else cfg.min_score_gap
            pairs, counts = build_pairs([r["prompt"] for r in batch], samples, scores, gap, cfg.max_similarity)
            if cfg.opening_pairs:
                opened_vs_free = opening_pairs([r["prompt"] for r in batch], samples, scores, len(cfg.openings),
                                               pairs, gap, cfg.max_similarity)
                pairs += opened_vs_free
                counts.update({"opening_pairs": len(opened_vs_free), "pairs": len(pairs)})
            balancing_now = cfg.balance_openings and not labels_from
            if balancing_now:
                pairs, changed = balance_by_openings(pairs, cfg.openings, recipe.seed + number, cfg.balance_openings)
                counts[f"{BALANCED[cfg.balance_openings]}_for_balance"] = changed
                counts["pairs"] = len(pairs)
            write_samples(round_dir / "samples.jsonl", batch, samples, scores, state.is_main_process)
            if measuring_only:
                log.append(entry)
                finish_round(round_dir, entry, state.is_main_process)
                del policy
                break
            entry.update({f"round_{k}": v for k, v in counts.items() if k != "prompts"})
            print(f"[online_dpo] round {number}: reward {entry['reward_mean']:.3f}"
                  + (f", gold {entry['gold_mean']:.3f}" if judges else "")
                  + f", KL {entry['kl']:.3f}; {counts['pairs']} pairs"
                  + (f", {counts['opening_pairs']} of them an opened answer against a free one"
                     if cfg.opening_pairs else "")
                  + f" ({counts['ties']} ties, {counts['near_identical']} near-identical dropped"
                  + (f", {changed} {BALANCED[cfg.balance_openings]} to balance openings" if balancing_now else "")
                  + "); seconds: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), flush=True)
            if labels_from:
                queue_round(round_dir, labels_from, entry, pairs, batch)
                entry, pairs = labelled_pairs(recipe, round_dir, labels_from, number)

        # 4. train: DPO (+ NLL on chosen) on this round's pairs, reference = the policy at the round's start
        if policy is None:  # resumed from saved pairs or labels: nothing was sampled this time
            policy = on_this_process_device(load_policy(recipe, adapter_dir=adapter))
            sync_special_tokens(policy, tokenizer)
        release_memory()  # the round's reward model and scoring passes, before DPO trains
        if pairs:
            if state.is_main_process and not (round_dir / "pairs.json").is_file():
                write_json_atomic(round_dir / "pairs.json", {"log": entry, "pairs": pairs})
            started = time.time()
            entry.update(train_round(recipe, round_dir, policy, tokenizer, pairs))
            entry["seconds_train"] = round(time.time() - started, 1)
            adapter = round_dir / "adapter"
        else:
            print(f"[online_dpo] round {number}: no pairs (every prompt's samples tied"
                  + (", or balance_openings dropped them all" if cfg.balance_openings else "")
                  + "); the policy is unchanged")
        del policy
        release_memory()  # the round's trainer, optimiser and activations, before the next round samples
        log.append(entry)
        finish_round(round_dir, entry, state.is_main_process)
        if state.is_main_process:
            write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in log))

    # --- save: the last round's adapter is the stage's policy
    if state.is_main_process:
        write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in log))
        if adapter != start_adapter:
            shutil.rmtree(out / "adapter", ignore_errors=True)
            shutil.copytree(adapter, out / "adapter")
        else:  # no round found a pair: the stage's policy is the one it started from
            raise RecipeError("online_dpo: no round produced a single pair (every prompt's samples scored alike"
                              + (", or balance_openings dropped every pair: the reward model chose or rejected "
                                 "the openings' replies in one direction only" if cfg.balance_openings else "")
                              + "); raise temperature or samples_per_prompt, or lower min_score_gap")
    state.wait_for_everyone()
    return summarise(log, judges[:1])


def sample_round_with_vllm(recipe: Recipe, engine, adapter, tokenizer, prompts: list) -> tuple:
    """A round's candidates from vLLM: the round's policy is pushed to the engine (started on the first call),
    greedy first when the recipe includes it. Returns (engine, samples) in sample_answers' layout."""
    from align.vllm_sampling import engine_settings, start_engine, vllm_answers

    cfg = recipe.online_dpo
    policy = on_this_process_device(load_policy(recipe, adapter_dir=adapter, trainable=False))
    if engine is None:
        engine = start_engine(policy, tokenizer, engine_settings(
            cfg, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, None, recipe.model.trust_remote_code))
    engine.model = policy  # the engine pushes this round's policy, merged, before it samples
    samples = vllm_answers(engine, policy, tokenizer, prompts, cfg.samples_per_prompt - cfg.include_greedy)
    if cfg.include_greedy:
        greedy = vllm_answers(engine, policy, tokenizer, prompts, 1, greedy=True)
        samples = [[first[0], *rest] for first, rest in zip(greedy, samples)]
    return engine, samples


def refresh_reward_model(recipe: Recipe, round_dir: Path, tokenizer, rows: list[dict], samples: list[list[dict]],
                         reward_adapter: Path) -> tuple[Path, dict]:
    """Iterative RLHF: the relabelling judge (standing in for labellers, on training prompts) orders pairs of this
    round's candidates, and the reward model trains on them (the reward stage's trl settings) before it scores
    the round. Returns the updated adapter and what it learned from."""
    from trl import RewardTrainer

    judge = recipe.online_dpo.relabel_with
    prompts, texts, columns = flatten(rows, samples)
    verdicts = regroup(judge_scores([judge], prompts, texts, columns)[judge], samples)
    pairs, counts = build_pairs([r["prompt"] for r in rows], samples, verdicts)
    target = round_dir / "reward_adapter"
    if not pairs:
        return reward_adapter, {"relabelled_pairs": 0}
    out = round_dir / "reward"
    args = trainer_args(recipe, "reward", out)
    record_trl_config(args, out)
    model = load_reward_model(resolve_model_path(recipe.model.name_or_path),
                              load_kwargs(recipe.model, recipe.quantization), tokenizer.pad_token_id,
                              adapter_dir=reward_adapter, trainable=True)
    rows_ = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    trainer = RewardTrainer(model=model, args=args, train_dataset=to_dataset(rows_), processing_class=tokenizer,
                            callbacks=trainer_callbacks(out))
    add_lengths(trainer)
    result = trainer.train()
    save_adapter(trainer, target)
    del trainer, model
    release_memory()  # its activations and optimiser, before the round's scoring and DPO training
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    print(f"[online_dpo] {round_dir.name}: reward model relabelled on {len(pairs)} pairs of this round's answers "
          f"ordered by {judge} (loss {result.training_loss:.3f})")
    return target, {"relabelled_pairs": len(pairs), "relabel_loss": result.training_loss}


class LabelsPending(RuntimeError):
    """A round's pairs wait in the label database for people to judge them: the run stops here, and the next
    `align run` continues from the labels given."""


def label_database(recipe: Recipe, out: Path) -> Path | None:
    """Where each round's pairs are judged: label_db as given, the run's labels.db when only a labeller is named,
    None when the round's own judge orders them."""
    cfg = recipe.online_dpo
    if cfg.label_db:
        return Path(cfg.label_db).expanduser()
    return out.parent / "labels.db" if cfg.labeller else None


def queue_round(round_dir: Path, db: Path, entry: dict, candidates: list[dict], rows: list[dict]) -> None:
    """Queue the round's candidate pairs in the label database, once (queued.json remembers them and the round's
    log entry), each with its prompt row (answer key, category) for whoever labels it."""
    from align.labeller import row_for_labeller
    from align.labelling.store import LabelStore, item_id_for

    if (round_dir / "queued.json").is_file():
        return
    source = round_source(round_dir)
    row_of = {json.dumps(row["prompt"]): row for row in rows}
    items = []
    for pair in candidates:
        texts = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        # the id names the round and the two answers: a redone round asks again only for pairs it has not asked for
        items.append({"id": f"{source.replace('/', '-')}-{item_id_for(pair['prompt'], *texts)}",
                      "prompt": pair["prompt"], "response_1": texts[0], "response_2": texts[1],
                      "model_1": source, "model_2": source,
                      "extra": row_for_labeller(row_of[json.dumps(pair["prompt"])])})
    store = LabelStore(db)
    try:
        store.add_items(items, source=source)
    finally:
        store.close()
    write_json_atomic(round_dir / "queued.json", {"log": entry, "item_ids": [item["id"] for item in items]})


def round_source(round_dir: Path) -> str:
    """A round's name in the label database (its items' source and model): RUN/online_dpo/round-N, the same
    wherever the run directory lives."""
    return f"{round_dir.parent.parent.name}/online_dpo/{round_dir.name}"


def labelled_pairs(recipe: Recipe, round_dir: Path, db: Path, number: int) -> tuple[dict, list[dict]]:
    """The round's log entry and the pairs judged in the label database (majority per pair; ties and both-bad
    teach nothing), balanced by openings when the recipe says so. The recipe's labeller, if it names one, first
    judges whatever of the round's pairs waits there. Raises LabelsPending while fewer than labels_needed (default:
    all) of them have a judgment."""
    from align.labeller import flipped_majorities, label_as_annotators, label_counts, labeller_annotators, per_pair
    from align.labelling.store import LabelStore, preference_rows
    from align.reward_functions import load_labeller

    cfg = recipe.online_dpo
    saved = json.loads((round_dir / "queued.json").read_text())
    if cfg.labeller:
        label_as_annotators(db, load_labeller(cfg.labeller), cfg.annotator, recipe.seed + number, cfg.labels_per_pair,
                            source=round_source(round_dir), noise=cfg.labeller_noise)
    ids = set(saved["item_ids"])
    store = LabelStore(db)
    try:
        judged = [j for j in store.judgments() if j["item_id"] in ids]
    finally:
        store.close()
    # the labeller's counts from the database, so a round resumed after an earlier labelling reports all of them
    names = set(labeller_annotators(cfg.annotator, cfg.labels_per_pair)) if cfg.labeller else set()
    mine = label_counts([j for j in judged if j["annotator"] in names])
    labeller = {f"labeller_{key}": value for key, value in mine.items()} if cfg.labeller else {}
    if cfg.labeller and cfg.labels_per_pair > 1:
        labeller["labeller_majority_flipped"] = flipped_majorities(judged, names)
    needed = min(cfg.labels_needed or len(ids), len(ids))
    done = len({j["item_id"] for j in judged})
    if done < needed:
        raise LabelsPending(
            f"online_dpo {round_dir.name}: {done} of {len(ids)} pairs labelled in {db}, {needed} needed"
            + (f" ({cfg.labeller} judged every pair it was given: the rest are held by people in the labelling app)"
               if cfg.labeller else "")
            + f". Label them in the browser (align label --db {db}), then run the same `align run` again: "
            f"it continues from the labels.")
    pairs = [{k: row[k] for k in ("prompt", "chosen", "rejected")}
             for row in preference_rows(judged, majority=True)]
    # who judged them: the labeller, people, or both (a redone round keeps the labels its pairs already had)
    annotators = sorted({j["annotator"] for j in judged})
    by_labeller = bool(names & set(annotators))
    people = [a for a in annotators if a not in names]
    labelled_by = "; ".join(([f"{cfg.annotator} ({cfg.labeller}, noise {cfg.labeller_noise:g}"
                              f"{per_pair(cfg.labels_per_pair)})"]
                             if by_labeller else [])
                            + ([f"people ({', '.join(people)})"] if people else []))
    entry = {**saved["log"], "labelled_by": labelled_by, "labelled_items": done, "labelled_pairs": len(pairs),
             **labeller}
    balanced = ""
    if cfg.balance_openings:
        pairs, changed = balance_by_openings(pairs, cfg.openings, recipe.seed + number,
                                             cfg.balance_openings)
        entry[f"round_{BALANCED[cfg.balance_openings]}_for_balance"] = changed
        balanced = f", {changed} {BALANCED[cfg.balance_openings]} to balance openings"
    entry["round_pairs"] = len(pairs)
    print(f"[online_dpo] {round_dir.name}: {entry['labelled_pairs']} pairs from {done} items labelled in {db} by "
          f"{labelled_by}{balanced}" + (f" ({labeller['labeller_flipped']} of the labeller's "
                                        f"{labeller['labeller_labelled']} labels flipped by noise"
                                        + (f"; noise won {labeller['labeller_majority_flipped']} of the pairs' "
                                           f"majorities" if "labeller_majority_flipped" in labeller else "")
                                        + ")" if labeller else ""))
    return entry, pairs


def train_round(recipe: Recipe, round_dir: Path, policy, tokenizer, pairs: list[dict]) -> dict:
    """One DPOTrainer on the round's pairs; how far the chosen and rejected answers' log-probs moved from the
    round's start (a falling chosen log-prob is likelihood displacement) and the final margin."""
    from trl import DPOTrainer

    args = trainer_args(recipe, "online_dpo", round_dir)
    record_trl_config(args, round_dir)
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    lengths = check_lengths(rows, tokenizer, args.max_length, round_dir.name, ("chosen", "rejected"))
    policy.train()
    trainer = DPOTrainer(model=policy, args=args, train_dataset=to_dataset(rows, round_dir / "data"),
                         processing_class=tokenizer, callbacks=trainer_callbacks(round_dir))
    add_lengths(trainer)
    result = trainer.train(resume_from_checkpoint=last_checkpoint(round_dir))
    save_adapter(trainer, round_dir / "adapter")
    if trainer.accelerator.is_main_process:
        shutil.rmtree(round_dir / "data", ignore_errors=True)  # tokens and reference log-probs
        shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)  # the round is done: its adapter is saved
    logged = [row for row in read_jsonl(round_dir / "metrics.jsonl") if "rewards/chosen" in row]
    figures = {"train_loss": result.training_loss, "truncated_pairs": lengths["truncated"]}
    if logged:
        # DPO's implicit reward is beta * (log pi - log pi_ref) of the same answer, so over the last half of the
        # steps it says how far the chosen (and rejected) answers' log-probs moved from the round's start, pair by
        # pair; comparing raw log-probs of the first and last batch would compare different pairs
        late = logged[len(logged) // 2 :]
        shift = {side: sum(row[f"rewards/{side}"] for row in late) / len(late) / args.beta
                 for side in ("chosen", "rejected")}
        figures.update({"chosen_logp_shift": shift["chosen"], "rejected_logp_shift": shift["rejected"],
                        "margin_last": logged[-1].get("rewards/margins")})
    return figures


def kl_to_start(policy, start_adapter: Path | None, tokenizer, rows: list[dict], samples: list[list[dict]],
                limit: int) -> list[float]:
    """KL(policy || the stage's starting policy) summed along the policy's own answers, on the first `limit`
    samples: the starting adapter is loaded beside the policy's on the same base (the base itself when the stage
    started from no adapter)."""
    import contextlib

    from align.eval_metrics import kl_along_answers, sequence_logprobs

    pairs = [(row["prompt"], a) for row, group in zip(rows, samples) for a in group][:limit]
    if not pairs:
        return [0.0]
    if start_adapter is not None:
        policy.load_adapter(str(start_adapter), adapter_name="start")
    current = policy.active_adapter

    def logprobs_of(name, ids, start):
        if name == "policy":
            policy.set_adapter(current)
            context = contextlib.nullcontext()
        else:
            context = policy.disable_adapter() if start_adapter is None else contextlib.nullcontext()
            if start_adapter is not None:
                policy.set_adapter("start")
        with context:
            return sequence_logprobs(policy, ids, start)

    try:
        return kl_along_answers(logprobs_of, tokenizer, [p for p, _ in pairs], [a for _, a in pairs], token_ids)
    finally:
        policy.set_adapter(current)
        if start_adapter is not None:
            policy.delete_adapter("start")


def summarise(log: list[dict], judges: list[str]) -> dict:
    """The stage's metrics: the first and last policy's figures, each round's, and plain-words warnings."""
    first, last = log[0], log[-1]
    trained = [row for row in log if "round_pairs" in row]
    displaced = [row["step"] + 1 for row in trained if row.get("chosen_logp_shift", 0) < -DISPLACEMENT_NATS]
    metrics = {
        "rounds": len(trained), "pairs": sum(row["round_pairs"] for row in trained),
        "start_reward_mean": first["reward_mean"], "final_reward_mean": last["reward_mean"],
        "final_kl": last["kl"], "final_answer_tokens": last["answer_tokens"], "log": log,
    }
    if judges:
        metrics.update({"gold_judge": judges[0], "start_gold_mean": first.get("gold_mean"),
                        "final_gold_mean": last.get("gold_mean")})
    if displaced:
        metrics["likelihood_displacement"] = (
            f"the chosen answers' log-probability fell more than {DISPLACEMENT_NATS} nats below the round's start "
            f"in round(s) "
            f"{', '.join(map(str, displaced))}: DPO widened the margin by pushing the chosen answers down too "
            f"(likelihood displacement); raise nll_weight or beta")
    return metrics


def finish_round(round_dir: Path, entry: dict, main: bool) -> None:
    if main:
        write_json_atomic(round_dir / "round.json", {"log": entry})


def write_samples(path: Path, rows: list[dict], samples: list[list[dict]], scores: list[list[float]], main: bool):
    if not main:
        return
    with path.open("w") as fh:
        for row, group, values in zip(rows, samples, scores):
            fh.write(json.dumps({"prompt": row["prompt"], "answers": [a["text"] for a in group],
                                 "scores": values}) + "\n")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
