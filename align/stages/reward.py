"""Reward model on preference pairs (trl RewardTrainer): the base with a LoRA adapter and a scalar score head.

With `labelled_samples` the training pairs also include the SFT model's own samples on training prompts, queued
as pairs in a label database (the web app's store) and labelled there by a labeller standing in for people (the
quickstart's is align.labeller:simulated, with its own rubric and label noise); the reward model then trains on
every preference pair the database holds. With `judge_labelled_pairs` a judge orders the samples directly.

Afterwards its pairwise accuracy is measured on held-out pairs (the eval dataset), and, when the recipe has gold
judges (eval.judges), on what it will actually judge: pairs of the SFT model's own samples on held-out prompts
ordered by the first gold judge, with best-of-n against greedy (sampled before the reward model loads, so the
two models never share memory). Easy offline pairs (rude against polite) say
little about that; these figures say whether an online stage can trust the reward model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from align.config import Recipe
from align.data import check_lengths, load_preferences, load_prompts, to_dataset
from align.generation import generate_answers, sample_answers
from align.models import load_kwargs, load_sampler, load_tokenizer, lora_config, resolve_model_path, torch_dtype
from align.onpolicy import (
    build_pairs, check_verdict, flatten, headroom, interval_text, judge_scores, per_kind_headroom, proxy_scores,
    ranking_accuracy, ranking_intervals, regroup,
)
from align.sharding import launched_sharding
from align.resources import release_memory
from align.trainers import add_lengths, last_checkpoint, save_adapter, trainer_callbacks
from align.trainer_settings import record_trl_config, trainer_args
from align.reward import load_reward_model, pairwise_accuracy, start_from_adapter


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from transformers import set_seed
    from trl import RewardTrainer

    from align.reward.training import GroupedRewardTrainer

    # --- config
    cfg = recipe.reward
    args = trainer_args(recipe, "reward", out)
    record_trl_config(args, out)
    set_seed(recipe.seed)

    # --- data
    tokenizer = load_tokenizer(recipe.model)
    train, where = load_preferences(cfg.dataset)
    lengths = check_lengths(train, tokenizer, args.max_length, where, ("chosen", "rejected"), dropped=True)
    evaluation = None
    if cfg.eval_dataset:
        evaluation, eval_where = load_preferences(cfg.eval_dataset)
        check_lengths(evaluation, tokenizer, args.max_length, eval_where, ("chosen", "rejected"))
    # RewardTrainer drops (not truncates) pairs longer than max_length: say how many.
    print(f"[reward] {len(train)} pairs from {where}; {lengths['truncated']} longer than max_length are skipped")
    metrics = {}
    if cfg.labelled_samples:
        pairs, labelled = labelled_samples(recipe, inputs, tokenizer, out)
        train = train + pairs
        metrics.update(labelled)
    if cfg.judge_labelled_pairs:
        pairs, labelled = judge_labelled_pairs(recipe, inputs, tokenizer)
        train = train + [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
        metrics.update(labelled)
    checked = None
    if cfg.policy_check_prompts and recipe.eval.judges:
        # The check's SFT answers are sampled and judged now, before the reward model loads: the sampler on top of
        # the trained reward model was the stage's memory peak. Its own random stream, so that the reward model
        # trains the same with or without the check.
        with torch.random.fork_rng():
            checked = policy_answers(recipe, inputs, tokenizer)

    # --- model
    model = load_reward_model(
        resolve_model_path(recipe.model.name_or_path),
        load_kwargs(recipe.model, recipe.quantization),
        tokenizer.pad_token_id,
        lora_config=lora_config(recipe.lora, "SEQ_CLS"),
        gradient_checkpointing=args.gradient_checkpointing,
        sharded=launched_sharding() is not None,
    )
    if cfg.init_from_sft:
        copied = start_from_adapter(model, inputs["sft"] / "adapter")
        metrics["initialised_from"] = str(inputs["sft"] / "adapter")
        print(f"[reward] starts from the SFT adapter ({copied} LoRA tensors), with a new score head")

    # --- trainer
    trainer = (GroupedRewardTrainer if cfg.group_by_prompt else RewardTrainer)(
        model=model,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(evaluation) if evaluation else None,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(out),
    )
    add_lengths(trainer)
    weights_dtype = torch_dtype(recipe.model.dtype)
    if recipe.quantization.load_in_4bit and weights_dtype != torch.bfloat16:
        # trl casts a 4-bit model's trainable weights (LoRA, score head) to bfloat16, which only runs under bf16
        # autocast; with float32 weights the head would meet float32 hidden states, so they go back to the model's
        for parameter in trainer.model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(weights_dtype)

    # --- train
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    metrics.update({"train_loss": result.training_loss, "train_pairs": len(train),
                    "skipped_pairs": lengths["truncated"]})
    if cfg.group_by_prompt:
        metrics["train_prompt_groups"] = len(trainer.train_dataset)
    model.eval()
    release_memory()  # the training's activations and gradients, before evaluation and the on-policy check sample
    if evaluation:
        held_out = pairwise_accuracy(model, tokenizer, evaluation, args.per_device_eval_batch_size)
        metrics.update({f"heldout_{k}": v for k, v in held_out.items()})
        print(f"[reward] held-out pairwise accuracy {held_out['accuracy']:.3f} on {held_out['pairs']} pairs")
    if checked:
        metrics.update(policy_check(recipe, checked, tokenizer, model))

    # --- save
    save_adapter(trainer, out / "adapter")
    return metrics


def starting_policy(recipe: Recipe, inputs: dict):
    """The SFT model (the base without an SFT stage), for sampling."""
    return load_sampler(recipe, inputs["sft"] / "adapter" if "sft" in inputs else None)


def training_prompt_samples(recipe: Recipe, inputs: dict, tokenizer, spec) -> tuple[list[dict], str, list]:
    """The SFT model's samples on the training prompts a labelling section names (its prompts, max_prompts,
    samples_per_prompt, max_new_tokens, temperature), then one continuing each of its openings, if it has any:
    (rows, where, samples)."""
    rows, where = load_prompts(spec.prompts)
    rows = rows[: spec.max_prompts]
    prompts = [r["prompt"] for r in rows]
    policy = starting_policy(recipe, inputs)
    samples = sample_answers(policy, tokenizer, prompts, spec.samples_per_prompt, spec.max_new_tokens,
                             spec.temperature, progress=True, openings=getattr(spec, "openings", []))
    del policy
    release_memory()  # the sampler's weights and decode buffers, before the reward model loads
    return rows, where, samples


def judge_labelled_pairs(recipe: Recipe, inputs: dict, tokenizer) -> tuple[list[dict], dict]:
    """Pairs of the SFT model's own samples on training prompts, best vs worst by the recipe's labelling judge,
    and how much room those samples show: pass@1 against pass@n under that judge."""
    spec = recipe.reward.judge_labelled_pairs
    rows, where, samples = training_prompt_samples(recipe, inputs, tokenizer, spec)
    prompts, texts, columns = flatten(rows, samples)
    scores = regroup(judge_scores([spec.judge], prompts, texts, columns)[spec.judge], samples)
    pairs, counts = build_pairs([r["prompt"] for r in rows], samples, scores)
    room = headroom(scores)
    print(f"[reward] {counts['pairs']} judge-labelled pairs from {spec.samples_per_prompt} SFT samples on "
          f"{len(rows)} prompts of {where} ({counts['ties']} ties, {counts['near_identical']} near-identical "
          f"dropped); {spec.judge}: pass@1 {room['pass_at_1']:.3f}, pass@{room['n']} {room['pass_at_n']:.3f}")
    return pairs, {"judge_labelled_pairs": counts["pairs"], "judge_labelled_ties": counts["ties"],
                   "judge_labelled_near_identical": counts["near_identical"], "judge_labelled_by": spec.judge,
                   "train_prompts_pass_at_1": room["pass_at_1"], "train_prompts_pass_at_n": room["pass_at_n"],
                   "train_prompts_n": room["n"]}


def label_db_path(recipe: Recipe, out: Path) -> Path:
    """The labelled_samples database: as given (relative to the working directory), else the run's labels.db."""
    given = recipe.reward.labelled_samples.label_db
    return Path(given).expanduser() if given else out.parent / "labels.db"


def labelled_samples(recipe: Recipe, inputs: dict, tokenizer, out: Path) -> tuple[list[dict], dict]:
    """The SFT model's samples on training prompts, every two that differ queued in the label database and
    labelled there by the recipe's labeller (as an annotator in the web app); then every preference pair the
    database holds, as training rows."""
    from align.labeller import (candidate_pairs, flipped_majorities, label_counts, label_through_store,
                                labeller_annotators)
    from align.labelling.store import LabelStore, answer_pair, read_label_rows
    from align.onpolicy import BALANCED, balance_by_openings
    from align.reward_functions import load_labeller

    spec = recipe.reward.labelled_samples
    rows, where, samples = training_prompt_samples(recipe, inputs, tokenizer, spec)
    db = label_db_path(recipe, out)
    model = f"{out.parent.name}/{'sft' if 'sft' in inputs else 'base'}"
    items = candidate_pairs(rows, samples, model)
    queued = label_through_store(db, items, load_labeller(spec.labeller), spec.annotator, source=f"{where} ({model})",
                                 seed=recipe.seed, labels_per_pair=spec.labels_per_pair, noise=spec.noise)
    majority = spec.labels_per_pair > 1
    pairs = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in read_label_rows(db, majority=majority)]
    in_database, balanced, noisy = len(pairs), {}, {}
    store = LabelStore(db, create=False)
    try:
        judgments = store.judgments()
    finally:
        store.close()
    # the labeller's labels of these pairs from the database, so a stage redone over it reports them all
    names = set(labeller_annotators(spec.annotator, spec.labels_per_pair))
    asked = {answer_pair(item["prompt"], item["response_1"], item["response_2"]) for item in items}
    latest = {}  # one label per pair and annotator, should the database hold the same pair twice
    for j in judgments:
        key = answer_pair(j["prompt"], j["text_a"], j["text_b"])
        if j["annotator"] in names and key in asked:
            latest[key, j["annotator"]] = j
    counts = label_counts(list(latest.values()))
    if majority:  # how clean the kept pairs are: majorities the labeller's noise made, over the database's pairs
        noisy["labelled_samples_majority_flipped"] = flipped_majorities(judgments, names)
    if spec.balance_openings:
        pairs, changed = balance_by_openings(pairs, spec.openings, recipe.seed, spec.balance_openings)
        balanced = {f"labelled_pairs_{BALANCED[spec.balance_openings]}_for_balance": changed}
    openings = f" and {len(spec.openings)} opened ones" if spec.openings else ""
    print(f"[reward] {len(items)} pairs of {spec.samples_per_prompt} SFT samples{openings} on {len(rows)} prompts of {where} "
          f"queued in {db} ({queued['queued']} new, {queued['already_there']} already there); "
          f"{labelled_by(spec)} labelled {queued['labelled']} now; its labels of these pairs there: "
          f"{counts['labelled']}, A {counts['A']}, B {counts['B']}, tie {counts['tie']}, "
          f"both bad {counts['both_bad']} ({counts['flipped']} flipped); the database gives {in_database} preference "
          f"pairs" + (f" (each pair's majority, {noisy['labelled_samples_majority_flipped']} of them made by "
                      f"noise; pairs without one dropped)" if majority else "")
          + (f", {len(pairs)} after balancing them by openings" if balanced else ""))
    return pairs, {"labelled_samples_items": len(items), "labelled_samples_labelled": counts["labelled"],
                   "labelled_samples_decisive": counts["A"] + counts["B"], "labelled_samples_flipped": counts["flipped"],
                   "labelled_samples_per_pair": spec.labels_per_pair, "labelled_by": labelled_by(spec),
                   "label_db": str(db), "label_db_pairs": in_database, "labelled_pairs_trained": len(pairs), **balanced,
                   **noisy}


def labelled_by(spec) -> str:
    """Who labelled the samples, as the log and the run summary name them."""
    from align.labeller import per_pair

    return f"{spec.annotator} ({spec.labeller}, noise {spec.noise:g}{per_pair(spec.labels_per_pair)})"


def policy_answers(recipe: Recipe, inputs: dict, tokenizer) -> dict:
    """What the on-policy check ranks: on held-out prompts, n candidate SFT answers (the greedy one and n-1
    samples, as an online round has them) and the first gold judge's verdicts on them."""
    cfg, judge = recipe.reward, recipe.eval.judges[0]
    rows, where = load_prompts(recipe.eval.dataset)
    rows = rows[: min(cfg.policy_check_prompts, recipe.eval.max_prompts)]
    prompts = [r["prompt"] for r in rows]
    policy = starting_policy(recipe, inputs)
    greedy = generate_answers(policy, tokenizer, prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size)
    samples = sample_answers(policy, tokenizer, prompts, cfg.policy_check_samples - 1, recipe.eval.max_new_tokens,
                             cfg.policy_check_temperature)
    samples = [[first, *rest] for first, rest in zip(greedy, samples)]
    del policy
    release_memory()  # the sampler's weights and decode buffers, before the reward model loads
    flat_prompts, texts, columns = flatten(rows, samples)
    gold = regroup(judge_scores([judge], flat_prompts, texts, columns)[judge], samples)
    return {"rows": rows, "where": where, "judge": judge, "samples": samples, "gold": gold}


def policy_check(recipe: Recipe, checked: dict, tokenizer, reward_model) -> dict:
    """Can the reward model judge the policy's own answers (policy_answers)? Its ranking accuracy over every
    candidate pair the gold judge separates, and best-of-n (the judge's score of the reward model's pick) against
    greedy: above greedy only if its picks among the samples beat what greedy had."""
    cfg, judge, rows, gold = recipe.reward, checked["judge"], checked["rows"], checked["gold"]
    greedy_gold = [verdicts[0] for verdicts in gold]  # the greedy answer is every prompt's first candidate
    proxy = proxy_scores(reward_model, tokenizer, rows, checked["samples"], [], None, 0.0)
    ranking, room = ranking_accuracy(proxy, gold), headroom(gold)
    greedy_pass = sum(greedy_gold) / len(greedy_gold)
    intervals = ranking_intervals(proxy, gold, cfg.policy_check_bootstrap, recipe.seed)
    trusted, why = check_verdict(ranking["accuracy"], ranking["best_of_n"], greedy_pass, intervals, room["n"])
    kinds = per_kind_headroom(rows, gold, proxy)
    labeller = labeller_agreement(recipe, checked)
    for kind, figures in labeller.get("by_kind", {}).items():
        kinds[kind]["labeller_accuracy"] = figures["accuracy"]

    print(f"[reward] on the SFT model's own answers (temperature {cfg.policy_check_temperature}) to {len(rows)} "
          f"held-out prompts ({checked['where']}, judged by {judge}): "
          f"ranks the right one higher {ranking['accuracy'] or float('nan'):.3f}"
          f"{interval_text(intervals, 'accuracy')} of "
          f"{ranking['pairs']} pairs; best-of-{room['n']} {ranking['best_of_n']:.3f} vs greedy {greedy_pass:.3f}, "
          f"difference {ranking['best_of_n'] - greedy_pass:+.3f}{interval_text(intervals, 'best_minus_greedy')} "
          f"(pass@1 {room['pass_at_1']:.3f}, pass@{room['n']} {room['pass_at_n']:.3f})"
          + ("" if trusted else f"; NOT trusted: {why}; an online stage should not trust it"))
    if labeller.get("pairs"):
        print(f"[reward] the labeller itself ({recipe.reward.labelled_samples.labeller}, without its noise) orders "
              f"{labeller['agrees']:.3f} of these pairs as {judge} does, calls {labeller['ties']:.3f} a tie or both "
              f"bad and reverses {labeller['reverses']:.3f}: a reward model that reproduced its labels exactly "
              f"would rank {labeller['accuracy']:.3f} (ties half)")
    for kind, figures in kinds.items():
        print(f"[reward]   SFT on {kind} (n={figures['prompts']}): greedy {figures['greedy']:.3f}, "
              f"pass@1 {figures['pass_at_1']:.3f}, pass@{room['n']} {figures['pass_at_n']:.3f}; reward model: "
              f"best-of-{room['n']} {figures['best_of_n']:.3f}, ranks {figures['accuracy'] or float('nan'):.3f} "
              f"of {figures['pairs']} pairs" + (f" (the labeller {figures['labeller_accuracy']:.3f})"
                                                if "labeller_accuracy" in figures else ""))
    return {"policy_check_intervals": intervals, "policy_check_by_kind": kinds, "policy_check_judge": judge,
            "policy_check_prompts": len(rows), "policy_check_pairs": ranking["pairs"],
            "policy_check_accuracy": ranking["accuracy"], "policy_check_best_of_n": ranking["best_of_n"],
            "policy_check_greedy": greedy_pass, "policy_check_pass_at_1": room["pass_at_1"],
            "policy_check_pass_at_n": room["pass_at_n"], "policy_check_n": room["n"],
            "policy_check_temperature": cfg.policy_check_temperature,
            "policy_check_trusted": trusted, "policy_check_untrusted_because": why,
            **({"policy_check_labeller": {k: labeller[k] for k in ("pairs", "agrees", "ties", "reverses")},
                "policy_check_labeller_accuracy": labeller["accuracy"]} if labeller.get("pairs") else {})}


def labeller_agreement(recipe: Recipe, checked: dict) -> dict:
    """With labelled samples: how the stage's labeller, without noise, orders the check's pairs against the judge
    (align.labeller.agreement_with_judge); {} without a labeller or where it cannot judge the check's prompts (a
    held-out set without the columns it reads), said in the log."""
    from align.labeller import agreement_with_judge
    from align.reward_functions import load_labeller

    spec = recipe.reward.labelled_samples
    if spec is None:
        return {}
    try:
        return agreement_with_judge(load_labeller(spec.labeller), checked["rows"], checked["samples"],
                                    checked["gold"], recipe.seed)
    except Exception as err:  # a figure beside the check: never worth the trained reward model it would cost
        print(f"[reward] the labeller's own agreement with {checked['judge']} is not measured: "
              f"{type(err).__name__}: {err}")
        return {}


# ------------------------------------------------------------------------- the check's verdict, as online stages read it


def untrusted_reward_model(recipe: Recipe, stage: str, inputs: dict) -> str | None:
    """Refuse to optimise against a reward model that the reward stage found unable to rank the SFT model's own
    answers (check_verdict: not clearly better than chance, or its best-of-n not clearly above greedy): online_dpo,
    ppo, rloo and grpo all ask this before they sample. With keep_start_if_untrusted, return why instead (None when
    there is nothing to say); without require_trusted_reward_model, say that it goes on with such a model."""
    from align.config import RecipeError
    from align.runs import read_stage

    cfg = getattr(recipe, stage)
    scores_with_this_runs_model = cfg.use_reward_model and getattr(cfg, "reward_model_path", None) is None
    if not (scores_with_this_runs_model and "reward" in inputs):
        return None
    figures = read_stage(inputs["reward"])["metrics"]
    if figures.get("policy_check_trusted", True):
        return None
    because = f": {figures['policy_check_untrusted_because']}" if figures.get("policy_check_untrusted_because") else ""
    if not cfg.require_trusted_reward_model:
        print(f"[{stage}] the reward stage did not trust its model{because}; going on because "
              f"{stage}.require_trusted_reward_model is false")
        return None
    if getattr(cfg, "relabel_with", None):  # online_dpo retrains the judge on each round's answers before it judges
        print(f"[{stage}] the reward stage did not trust its model "
              f"(best-of-{figures['policy_check_n']} {figures['policy_check_best_of_n']:.3f} vs greedy "
              f"{figures['policy_check_greedy']:.3f}{because}); going on because relabel_with retrains it on each round's "
              f"answers before it judges them")
        return None
    if cfg.keep_start_if_untrusted and recipe.starting_policy(stage) in inputs:
        return (f"the reward model is not trusted: on the SFT model's own answers its best-of-"
                f"{figures['policy_check_n']} scores {figures['policy_check_best_of_n']:.3f} against greedy "
                f"{figures['policy_check_greedy']:.3f} ({figures['policy_check_judge']}), ranking "
                f"{figures['policy_check_accuracy'] or 0:.3f} of {figures['policy_check_pairs']} pairs rightly"
                + because)
    raise RecipeError(
        f"{stage}: the reward model cannot rank the SFT model's own answers: it orders "
        f"{figures['policy_check_accuracy'] or 0:.3f} of {figures['policy_check_pairs']} judge-separated pairs "
        f"rightly, and "
        f"its best-of-{figures['policy_check_n']} scores {figures['policy_check_best_of_n']:.3f} against greedy "
        f"{figures['policy_check_greedy']:.3f} on {figures['policy_check_judge']}{because}. Train it on pairs like the "
        f"policy's (reward.labelled_samples, reward.judge_labelled_pairs, or labels from people), set "
        f"{stage}.keep_start_if_untrusted: true to keep the starting policy, or "
        f"{stage}.require_trusted_reward_model: false to go on anyway.")


def keep_starting_policy(recipe: Recipe, stage: str, out: Path, inputs: dict, why: str) -> dict:
    """Stop an online stage before it samples: its adapter is a copy of the policy it would have started from, so
    eval and export see that policy as the stage's result. Returns the stage's metrics, which say why."""
    import shutil

    from accelerate import PartialState

    state, start = PartialState(), recipe.starting_policy(stage)
    if state.is_main_process:
        shutil.rmtree(out / "adapter", ignore_errors=True)
        shutil.copytree(inputs[start] / "adapter", out / "adapter")
    state.wait_for_everyone()
    print(f"[{stage}] stopped before training: {why}; the stage's policy is {start}'s")
    return {"stopped": why, "kept_policy": start}
