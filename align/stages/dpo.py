"""Direct preference optimisation on preference pairs (trl DPOTrainer).

The policy continues the SFT adapter; trl copies it into a frozen 'ref' adapter on the same base, so the
reference is the SFT model without a second copy of the weights and without merging into a 4-bit base.
Without an SFT stage the policy is a fresh adapter and the reference is the base (adapter disabled).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from align.config import Recipe
from align.data import check_lengths, load_preferences, shortest_first, to_dataset
from align.models import load_policy, load_tokenizer, sync_special_tokens
from align.trainers import add_lengths, last_checkpoint, save_adapter, trainer_callbacks
from align.trainer_settings import record_trl_config, trainer_args


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from transformers import set_seed
    from trl import DPOTrainer

    # --- config
    cfg = recipe.dpo
    args = trainer_args(recipe, "dpo", out)
    record_trl_config(args, out)
    set_seed(recipe.seed)

    # --- data
    tokenizer = load_tokenizer(recipe.model)
    train, where = load_preferences(cfg.dataset)
    lengths = check_lengths(train, tokenizer, args.max_length, where, ("chosen", "rejected"))
    evaluation = None
    if cfg.eval_dataset:
        evaluation, eval_where = load_preferences(cfg.eval_dataset)
        eval_lengths = check_lengths(evaluation, tokenizer, args.max_length, eval_where, ("chosen", "rejected"))
    print(f"[dpo] {len(train)} pairs from {where}; {lengths['truncated']} longer than max_length get cut")
    if args.train_sampling_strategy != "sequential":
        # trl computes the reference log-probs batch by batch in stored order, so shortest first pads 1.6x less
        # there on the bundled pairs; the sampler decides the training order either way
        train = shortest_first(train, lengths["row_lengths"])
        if evaluation:
            evaluation = shortest_first(evaluation, eval_lengths["row_lengths"])

    # --- model: policy starts from the SFT adapter when there is one
    start = recipe.starting_policy("dpo")
    start_adapter = inputs[start] / "adapter" if start else None
    model = load_policy(recipe, adapter_dir=start_adapter, gradient_checkpointing=args.gradient_checkpointing)
    sync_special_tokens(model, tokenizer)

    # --- trainer
    trainer = DPOTrainer(
        model=model,
        args=args,
        # on disk in the stage directory: the precomputed reference log-probs are cached beside the rows, where
        # every process finds them
        train_dataset=to_dataset(train, out / "data" / "train"),
        eval_dataset=to_dataset(evaluation, out / "data" / "eval") if evaluation else None,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(out),
    )
    add_lengths(trainer)

    # --- train
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    metrics = {"train_loss": result.training_loss, "train_pairs": len(train), "truncated_pairs": lengths["truncated"]}
    if evaluation:
        metrics.update(trainer.evaluate())

    # --- save
    save_adapter(trainer, out / "adapter")
    if trainer.accelerator.is_main_process:
        shutil.rmtree(out / "data", ignore_errors=True)  # tokens and reference log-probs, rebuilt by any rerun
    return metrics
