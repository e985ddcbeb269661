"""Supervised fine-tuning: a LoRA adapter on the base learns the demonstrations (trl SFTTrainer).

Loss is on the completion (the assistant's answer) only, EOS included, so the model learns to stop.
"""

from __future__ import annotations

from pathlib import Path

from align.config import Recipe
from align.data import check_lengths, load_demonstrations, to_dataset
from align.models import load_policy, load_tokenizer, sync_special_tokens
from align.trainers import add_lengths, last_checkpoint, save_adapter, trainer_callbacks
from align.trainer_settings import record_trl_config, trainer_args


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from transformers import set_seed
    from trl import SFTTrainer

    # --- config
    cfg = recipe.sft
    args = trainer_args(recipe, "sft", out)
    record_trl_config(args, out)
    set_seed(recipe.seed)

    # --- data: checked before the model loads, so bad rows fail in seconds
    tokenizer = load_tokenizer(recipe.model)
    train, where = load_demonstrations(cfg.dataset)
    lengths = check_lengths(train, tokenizer, args.max_length, where, ("completion",))
    evaluation = None
    if cfg.eval_dataset:
        evaluation, eval_where = load_demonstrations(cfg.eval_dataset)
        check_lengths(evaluation, tokenizer, args.max_length, eval_where, ("completion",))
    print(f"[sft] {len(train)} demonstrations from {where}; {lengths['truncated']} longer than max_length get cut")

    # --- model
    model = load_policy(recipe, gradient_checkpointing=args.gradient_checkpointing)
    sync_special_tokens(model, tokenizer)

    # --- trainer
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(evaluation) if evaluation else None,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(out),
    )
    add_lengths(trainer)

    # --- train (resumes from the newest checkpoint of an interrupted run)
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    metrics = {"train_loss": result.training_loss, "train_rows": len(train), "truncated_rows": lengths["truncated"]}
    if evaluation:
        metrics.update(trainer.evaluate())

    # --- save
    save_adapter(trainer, out / "adapter")
    return metrics
