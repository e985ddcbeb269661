"""Chain a recipe's stages: each stage's output directory is handed to the stages after it, finished stages are
skipped on re-run, and a finished stage whose recipe section changed is never silently reused or overwritten.
"""

from __future__ import annotations

import time
from pathlib import Path

from align.config import Recipe, RecipeError, recipe_to_yaml
from align.onpolicy import interval_text
from align.runs import (
    finish_stage, finished_with_recipe, is_finished, read_stage, run_dir, stage_dir, versions, write_json_atomic,
    write_text_atomic,
)
from align.child_processes import StageProcessDied, in_child_process, start_child_processes, stop_child_processes
from align.resources import StageResources, release_memory
from align.run_lock import run_lock
from align.sharding import sharding_problems
from align.vllm_sampling import vllm_problems
from align.stages import ONLINE_STAGES, STAGES, TRL_STAGES
from align.trainer_settings import trl_args

BARRIER_TIMEOUT_HOURS = 3
# What the fork server behind each stage's process imports once (align.child_processes.start_child_processes), so a
# stage starts in a fraction of a second rather than after 7 s of imports. A module that does not exist is skipped.
STAGE_PROCESS_PRELOAD = (
    "align.pipeline", "align.models", "align.reward", "peft", "datasets", "trl.trainer.sft_trainer",
    "trl.trainer.dpo_trainer", "trl.trainer.reward_trainer", *sorted({stage.run.split(":")[0] for stage in STAGES.values()}),
)

def select_stages(recipe: Recipe, only: str | None, start: str | None) -> list[str]:
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in recipe.stages:
            raise RecipeError(f"{flag} {value}: not in this recipe's stages {recipe.stages}")
    if only and start:
        raise RecipeError("give --only or --from, not both")
    if only:
        return [only]
    if start:
        return recipe.stages[recipe.stages.index(start) :]
    return list(recipe.stages)


def plan(recipe: Recipe, only: str | None = None, start: str | None = None) -> list[tuple[str, str]]:
    """[(stage, 'run' | 'skip' | 'redo')] and checks that every input a selected stage needs will exist."""
    selected = select_stages(recipe, only, start)
    steps = []
    for stage in recipe.stages:
        directory = stage_dir(recipe, stage)
        finished = is_finished(directory)
        if stage not in selected:
            steps.append((stage, "skip"))
            continue
        if finished and start is None and only is None:
            if not finished_with_recipe(directory, recipe, stage):
                raise RecipeError(
                    f"stage '{stage}' in {directory} finished with a different recipe (its section, model, lora, "
                    f"quantization or seed changed). Redo it and the stages after it with --from {stage}, or give "
                    f"the run a new name (name=...); the old results are kept aside, never deleted."
                )
            steps.append((stage, "skip"))
        else:
            steps.append((stage, "redo" if finished else "run"))
    running = [stage for stage, action in steps if action != "skip"]
    problems = sharding_problems(recipe, running) + vllm_problems(recipe, running)
    if problems:
        raise RecipeError("cannot run this recipe as launched:\n  " + "\n  ".join(problems))
    for stage, action in steps:
        if action != "skip" and stage in TRL_STAGES:
            trl_args(recipe, stage, stage_dir(recipe, stage))  # TRL's own checks, before anything trains
    will_exist = {s for s, action in steps if action != "skip" or is_finished(stage_dir(recipe, s))}
    for stage, action in steps:
        if action == "skip":
            continue
        for need in STAGES[stage].reads:
            if need in recipe.stages and need not in will_exist:
                raise RecipeError(
                    f"stage '{stage}' needs the output of '{need}' ({stage_dir(recipe, need)}), which has not "
                    f"finished; run without --only/--from first"
                )
    return steps


def run_recipe(recipe: Recipe, only: str | None = None, start: str | None = None) -> dict:
    """Run the selected stages, holding the run directory's lock (one writer per run); return {stage: stage
    record} for every finished stage."""
    with run_lock(run_dir(recipe)):
        try:
            return run_stages(recipe, only, start)
        finally:
            stop_child_processes()


def run_stages(recipe: Recipe, only: str | None, start: str | None) -> dict:
    from datetime import timedelta

    from accelerate import PartialState

    # Created before anything else touches the process group: while the main process evaluates and exports
    # (an 8B merge can take a long time), the other ranks wait at a barrier, past torch's 10-minute default.
    state = PartialState(timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
    # Under accelerate launch the launched processes hold the process group: their stages run in them.
    isolated = recipe.isolate_stages and state.num_processes == 1
    if isolated:
        start_child_processes(STAGE_PROCESS_PRELOAD)
    steps = plan(recipe, only, start)
    root = run_dir(recipe)
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / "recipe.yaml", recipe_to_yaml(recipe))
        write_json_atomic(root / "versions.json", versions())
    state.wait_for_everyone()

    records, inputs = {}, {}
    for stage, action in steps:
        directory = stage_dir(recipe, stage)
        if action == "skip":
            if is_finished(directory):
                records[stage] = read_stage(directory)
                inputs[stage] = directory
                print(f"[{stage}] finished earlier: {directory} (skipped)")
            continue
        if action == "redo" and state.is_main_process:
            aside = directory.with_name(f"{stage}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            directory.rename(aside)  # the user's earlier result is kept, not deleted
            print(f"[{stage}] earlier result moved to {aside}")
        state.wait_for_everyone()
        directory.mkdir(parents=True, exist_ok=True)
        print(f"[{stage}] starting -> {directory}", flush=True)
        if STAGES[stage].every_process or state.is_main_process:  # trainers run on every process
            if isolated:
                try:
                    metrics, usage = in_child_process(measured_stage, stage, recipe, directory, dict(inputs))
                except StageProcessDied as died:
                    raise StageProcessDied(f"stage '{stage}': {died}. Finished stages and complete checkpoints "
                                           f"are kept: run the same command again to go on") from None
            else:
                metrics, usage = measured_stage(stage, recipe, directory, dict(inputs))
                release_memory()  # what this stage loaded is not the next stage's baseline
            if state.is_main_process:
                records[stage] = finish_stage(directory, recipe, stage, metrics, usage["seconds"], inputs, usage)
        state.wait_for_everyone()
        if not state.is_main_process:
            records[stage] = read_stage(directory)
        inputs[stage] = directory
        print(f"[{stage}] done in {records[stage]['seconds']:.0f}s", flush=True)
    if state.is_main_process:
        from align.report import write_report

        print(summary(recipe, records))
        print(f"  report: {write_report(run_dir(recipe))}")
    return records


def measured_stage(stage: str, recipe: Recipe, directory: Path, inputs: dict) -> tuple[dict, dict]:
    """(the stage's metrics, its wall time and peak memory)."""
    with StageResources() as usage:
        metrics = STAGES[stage].function()(recipe, directory, inputs)
    return metrics, usage.record()


def _fraction(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary(recipe: Recipe, records: dict) -> str:
    from align.eval_metrics import gold_lines, hacking_message
    from align.report import proxy_gold_points
    from align.runs import read_jsonl

    lines = ["", f"== {recipe.name}: {run_dir(recipe)} =="]
    for stage, record in records.items():
        peak = record.get("resources", {}).get("rss_peak_gib")
        lines.append(f"  {stage:<10} {record['seconds']:>7.0f}s" + (f"   peak memory {peak:.2f} GiB" if peak else ""))
    reward = records.get("reward", {}).get("metrics", {})
    if "heldout_accuracy" in reward:
        lines.append(
            f"  reward model held-out pairwise accuracy: {reward['heldout_accuracy']:.3f} "
            f"({reward['heldout_pairs']} pairs, mean margin {reward['heldout_mean_margin']:.2f})"
        )
    if "labelled_samples_labelled" in reward:
        trained = reward.get("labelled_pairs_trained", reward["label_db_pairs"])  # fewer when balanced by openings
        lines.append(
            f"  reward model trained on {reward['train_pairs']} pairs, {trained} of them from {reward['label_db']}"
            + (f" (its {reward['label_db_pairs']} balanced by openings)" if trained != reward["label_db_pairs"] else "")
            + (f": {reward['labelled_samples_labelled']} labels of pairs of SFT samples given there by "
               f"{reward['labelled_by']}, {reward['labelled_samples_decisive']} decisive; each pair's majority "
               f"trained ({reward['labelled_samples_majority_flipped']} of them made by label noise)"
               if "labelled_samples_majority_flipped" in reward else
               f": {reward['labelled_samples_labelled']} pairs of SFT samples labelled there by "
               f"{reward['labelled_by']}, {reward['labelled_samples_decisive']} decisive"))
    if "policy_check_accuracy" in reward:
        intervals = reward.get("policy_check_intervals") or {}
        lines.append(
            f"  reward model on the SFT model's own answers ({reward['policy_check_prompts']} held-out prompts, "
            f"{reward['policy_check_judge']}; 95% bootstrap over prompts): ranks the better one higher "
            f"{_fraction(reward['policy_check_accuracy'])}{interval_text(intervals, 'accuracy')} of "
            f"{reward['policy_check_pairs']} pairs; best-of-{reward['policy_check_n']} "
            f"{reward['policy_check_best_of_n']:.3f} vs greedy {reward['policy_check_greedy']:.3f}, "
            f"{reward['policy_check_best_of_n'] - reward['policy_check_greedy']:+.3f}"
            f"{interval_text(intervals, 'best_minus_greedy')}"
            + ("" if reward["policy_check_trusted"] else "  (NOT trusted)"))
        if "policy_check_labeller_accuracy" in reward:
            shares = reward["policy_check_labeller"]
            lines.append(f"    the labeller without its noise on the same pairs: as the judge {shares['agrees']:.3f}, "
                         f"tie {shares['ties']:.3f}, reversed {shares['reverses']:.3f}; ranks "
                         f"{reward['policy_check_labeller_accuracy']:.3f} (ties half): what a reward model that "
                         f"reproduced its labels exactly would rank")
        for kind, figures in (reward.get("policy_check_by_kind") or {}).items():
            lines.append(f"    SFT on {kind} (n={figures['prompts']}): greedy {figures['greedy']:.3f}, pass@1 "
                         f"{figures['pass_at_1']:.3f}, pass@{reward['policy_check_n']} {figures['pass_at_n']:.3f}"
                         + (f"; reward model's best-of-{reward['policy_check_n']} {figures['best_of_n']:.3f}"
                            if figures.get("best_of_n") is not None else "")
                         + (f", ranks {_fraction(figures['accuracy'])} of {figures['pairs']} pairs"
                            if figures.get("pairs") else "")
                         + (f" (the labeller {figures['labeller_accuracy']:.3f})"
                            if "labeller_accuracy" in figures else ""))
        lines.append(
            f"  headroom on held-out prompts: SFT pass@1 {reward['policy_check_pass_at_1']:.3f}, "
            f"pass@{reward['policy_check_n']} {reward['policy_check_pass_at_n']:.3f}"
            + (f"; on training prompts pass@1 {reward['train_prompts_pass_at_1']:.3f}, "
               f"pass@{reward['train_prompts_n']} {reward['train_prompts_pass_at_n']:.3f}"
               if "train_prompts_pass_at_1" in reward else ""))
    for stage in ONLINE_STAGES:
        stopped = records.get(stage, {}).get("metrics", {})
        if stopped.get("stopped"):
            first = "round" if stage == "online_dpo" else "step"
            kept = stopped.get("kept_policy", "sft")
            kept = kept.upper() if kept in ("sft", "dpo", "kto") else kept
            lines.append(f"  {stage} stopped before its first {first}: {stopped['stopped']}; the final policy is "
                         f"{kept}'s")
    online = records.get("online_dpo", {}).get("metrics", {})
    if "log" in online:
        for row in online["log"]:
            lines.append(
                f"  online_dpo {row['policy']:<8} reward {row['reward_mean']:7.3f}"
                + (f"  gold {row['gold_mean']:.3f}" if "gold_mean" in row else "")
                + f"  KL {row['kl']:.3f}" + (f"  -> {row['round_pairs']} pairs" if "round_pairs" in row else ""))
        if online.get("likelihood_displacement"):
            lines.append(f"  online_dpo: {online['likelihood_displacement']}")
    for stage in ONLINE_STAGES:
        if stage in records:
            message = hacking_message(stage, proxy_gold_points(read_jsonl(stage_dir(recipe, stage) / "metrics.jsonl")))
            if message:
                lines.append(f"  {message}")
    ev = records.get("eval", {}).get("metrics", {})
    if "gold" in ev:
        lines.extend(gold_lines(ev["gold"]))
    if "win_rate" in ev:
        lines.append(
            f"  {ev['policy']} win rate vs {ev['baseline']} (reward model, {ev['prompts']} held-out prompts): "
            f"{ev['win_rate']:.3f}  (mean reward {ev['policy_mean_reward']:.2f} vs {ev['baseline_mean_reward']:.2f}; "
            f"KL from {ev['baseline']} {ev['kl_to_baseline']:.2f} nats per answer)"
        )
        from align.report import evaluation_rows

        rows = evaluation_rows(ev)
        width = max(len(label) for label, _, _ in rows)
        lines.append(f"  {'':<{width}}  {ev['policy']:<30} {ev['baseline']}")
        lines.extend(f"  {label:<{width}}  {policy:<30} {baseline}".rstrip() for label, policy, baseline in rows)
    ppo = records.get("ppo", {}).get("metrics", {})
    if "final_kl" in ppo:
        lines.append(
            f"  ppo last step: reward {ppo['final_reward_mean']:.3f}, KL to reference {ppo['final_kl']:.3f}, "
            f"{ppo['final_rollout_tokens_per_second']:.0f} rollout tokens/s"
            + (f"; stopped early: {ppo['stopped_early']}" if ppo.get("stopped_early") else "")
        )
    if "export" in records:
        model_dir = Path(stage_dir(recipe, "export")) / "model"
        lines.append(f"  merged chat model: {model_dir}   talk to it: align chat {model_dir}")
    return "\n".join(lines)
