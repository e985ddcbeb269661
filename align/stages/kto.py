"""KTO (Kahneman-Tversky optimisation, trl KTOTrainer) on unpaired feedback: answers people rated up or down.

What people give a chat model is a thumbs up or down on one reply, not a ranked pair; KTO learns from exactly
that. As in DPO, the policy continues the SFT adapter and the reference is that adapter frozen on the same base
(or the base with the adapter disabled when there is no SFT stage).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from align.config import Recipe
from align.data import check_lengths, load_feedback, to_dataset
from align.models import load_policy, load_tokenizer, sync_special_tokens
from align.trainers import add_lengths, last_checkpoint, save_adapter, trainer_callbacks
from align.trainer_settings import record_trl_config, trainer_args


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from transformers import set_seed
    from trl import KTOTrainer

    # --- config
    cfg = recipe.kto
    args = trainer_args(recipe, "kto", out)
    record_trl_config(args, out)
    set_seed(recipe.seed)

    # --- data: both kinds of feedback must be there, or KTO has nothing to weigh against
    tokenizer = load_tokenizer(recipe.model)
    train, where = load_feedback(cfg.dataset)
    lengths = check_lengths(train, tokenizer, args.max_length, where, ("completion",))
    evaluation = None
    if cfg.eval_dataset:
        evaluation, eval_where = load_feedback(cfg.eval_dataset)
        check_lengths(evaluation, tokenizer, args.max_length, eval_where, ("completion",))
    # batches are read in order (trl's KL estimate pairs neighbours), so mix ups and downs once, reproducibly
    random.Random(recipe.seed).shuffle(train)
    desirable = sum(row["label"] for row in train)
    print(f"[kto] {len(train)} rated answers from {where}: {desirable} up, {len(train) - desirable} down; "
          f"{lengths['truncated']} longer than max_length get cut")

    # --- model: the policy starts from the SFT adapter when there is one
    start = recipe.starting_policy("kto")
    start_adapter = inputs[start] / "adapter" if start else None
    model = load_policy(recipe, adapter_dir=start_adapter, gradient_checkpointing=args.gradient_checkpointing)
    sync_special_tokens(model, tokenizer)

    # --- trainer
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train, out / "data" / "train"),
        eval_dataset=to_dataset(evaluation, out / "data" / "eval") if evaluation else None,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(out),
    )
    add_lengths(trainer)

    # --- train
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    metrics = {"train_loss": result.training_loss, "train_rows": len(train), "desirable_rows": desirable,
               "undesirable_rows": len(train) - desirable, "truncated_rows": lengths["truncated"]}
    if evaluation:
        metrics.update(trainer.evaluate())

    # --- save
    save_adapter(trainer, out / "adapter")
    if trainer.accelerator.is_main_process:
        shutil.rmtree(out / "data", ignore_errors=True)  # tokens and reference log-probs, rebuilt by any rerun
    return metrics
