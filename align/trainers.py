"""What every stage that trains with a trl Trainer hands it: callbacks (each log line into metrics.jsonl, a stop
when the loss stops being a number, memory given back), batches of rows of similar length, the newest whole
checkpoint to resume from, and the trained adapter saved atomically."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from align.resources import trim_callback
from align.runs import replace_dir, temp_dir_for, trim_log


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite: the stage stops, its earlier checkpoints stay."""


WATCHED_FIGURES = ("loss", "grad_norm", "eval_loss")


def metrics_callback(directory: Path):
    """A TrainerCallback appending every log line (loss, lr, eval metrics) to <stage>/metrics.jsonl, and stopping
    the stage when a loss or gradient norm stops being a finite number."""
    from transformers import TrainerCallback

    class MetricsToJsonl(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with (directory / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
            bad = {k: logs[k] for k in WATCHED_FIGURES if isinstance((logs or {}).get(k), (int, float))
                   and not math.isfinite(logs[k])}
            if bad:
                # Raised before this step's checkpoint is written (the trainer logs, then saves), so every
                # checkpoint on disk was saved after a finite log line.
                kept = step_checkpoints(directory / "checkpoints")
                figures = ", ".join(f"{k} = {v}" for k, v in bad.items())
                raise TrainingDiverged(
                    f"{directory.name}: {figures} at step {state.global_step}; the stage stopped. "
                    + (f"Checkpoints before it are kept (newest: {kept[0]}). " if kept else "No checkpoint was saved yet. ")
                    + "Lower the learning rate or max_grad_norm, then `align run` again (or --from this stage).")

    return MetricsToJsonl()


def trainer_callbacks(directory: Path) -> list:
    """The callbacks every trl trainer of a stage gets: its log in metrics.jsonl, and memory given back as it trains."""
    return [metrics_callback(directory), trim_callback()]


def add_lengths(trainer) -> None:
    """Batch rows of similar length together (group_by_length): give the trainer's tokenized datasets a "length"
    column (the tokens of a row's longest sequence: trl's reward and DPO datasets have no input_ids to measure, and
    a prompt group of align.reward.training has several answers) and a length-grouped sampler seeded by data_seed
    and the epoch. transformers' own one shuffles with the global RNG, so a resumed run and the processes of a
    multi-process run would each see another order."""
    if trainer.args.train_sampling_strategy != "group_by_length":
        return
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    def lengths(batch: dict) -> dict:
        if "answer_ids" in batch:  # align.reward.training's prompt groups: the longest answer sets the padding
            return {"length": [max(len(answer) for answer in group) for group in batch["answer_ids"]]}
        prompts = batch.get("prompt_ids") or [[]] * len(next(iter(batch.values())))
        # SFT: input_ids; reward: chosen_ids/rejected_ids (with the prompt); DPO: prompt_ids + chosen/rejected_ids
        answers = [column for name, column in batch.items() if name.endswith("_ids") and name != "prompt_ids"]
        return {"length": [len(prompt) + max(len(column[row]) for column in answers)
                           for row, prompt in enumerate(prompts)]}

    for name in ("train_dataset", "eval_dataset"):
        dataset = getattr(trainer, name)
        if dataset is not None and "length" not in dataset.column_names:
            setattr(trainer, name, dataset.map(lengths, batched=True, desc=f"Measuring {name} rows"))

    args = trainer.args
    train_lengths = trainer.train_dataset["length"]
    seed = args.data_seed if args.data_seed is not None else args.seed

    class SeededLengthGroupedSampler(torch.utils.data.Sampler):
        """Random groups of 50 batches, each sorted by length; the same order on every process and on resume."""

        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:  # the trainer calls it before every epoch, resumed ones too
            self.epoch = epoch

        def __len__(self) -> int:
            return len(train_lengths)

        def __iter__(self):
            generator = torch.Generator().manual_seed(seed + self.epoch)
            batch = args.train_batch_size * args.gradient_accumulation_steps
            return iter(get_length_grouped_indices(train_lengths, batch, generator=generator))

    trainer._get_train_sampler = lambda dataset=None: SeededLengthGroupedSampler()
    # Evaluation order does not change its metrics: shortest rows first, so each batch pads least.
    eval_lengths = trainer.eval_dataset["length"] if trainer.eval_dataset is not None else []
    trainer._get_eval_sampler = lambda dataset: (sorted(range(len(dataset)), key=lambda i: eval_lengths[i])
                                                 if len(dataset) == len(eval_lengths) else None)


def step_checkpoints(root: Path) -> list[Path]:
    """The trainer's checkpoint-N directories under `root`, newest (highest N) first."""
    if not root.is_dir():
        return []
    found = (p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name))
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete checkpoint of an interrupted run of the stage in `directory`, to resume from.

    The trainer writes trainer_state.json last, so a checkpoint without a readable one was cut off mid-save
    (kill -9): it is moved aside (never deleted) and the one before it is used. Lines of metrics.jsonl logged
    after the checkpoint are dropped, since those steps are about to be redone. Under accelerate launch the main
    process does the moving and trimming while the others wait, then all resume from the same checkpoint.
    """
    from accelerate import PartialState

    state = PartialState()
    chosen, step = None, 0
    for checkpoint in step_checkpoints(Path(directory) / "checkpoints"):
        try:
            step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
            chosen = checkpoint
            break
        except (OSError, ValueError, KeyError):
            if state.is_main_process:
                aside = checkpoint.with_name(f"incomplete-{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}")
                checkpoint.rename(aside)
                print(f"[resume] {checkpoint.name} was cut off while being saved; moved aside to {aside.name}")
    if state.is_main_process:
        trim_log(Path(directory) / "metrics.jsonl", step)  # step 0: killed before its first checkpoint
        if chosen is not None:
            print(f"[resume] continuing from {chosen.name} (step {step})", flush=True)
    state.wait_for_everyone()
    return str(chosen) if chosen is not None else None


def save_adapter(trainer, target: Path) -> None:
    """Save only the trained adapter ('default'; DPO also holds a frozen 'ref' copy) atomically. Under FSDP or
    ZeRO-3 every process holds a shard of it: all take part in gathering it, the main process writes it."""
    from align.sharding import gathered_trainable_state

    gathered = gathered_trainable_state(trainer)
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    tmp = temp_dir_for(target)
    if gathered is None:
        model.save_pretrained(tmp, selected_adapters=["default"])
    else:
        model.save_pretrained(tmp, selected_adapters=["default"], state_dict=gathered)
    trainer.processing_class.save_pretrained(tmp)
    replace_dir(tmp, target)
    trainer.accelerator.wait_for_everyone()
