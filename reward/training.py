"""InstructGPT's batching for reward-model training: all of a prompt's labelled pairs in one batch row, each of its
answers scored once.

A labeller who compares every two of a prompt's K answers gives up to K(K-1)/2 pairs; trained pair by pair, each
answer goes through the model K-1 times per epoch. InstructGPT (Ouyang et al. 2022, section 3.5) trains on all of a
prompt's comparisons as one batch element instead: one forward pass per answer, the same Bradley-Terry loss per
pair, averaged over the step's pairs. `GroupedRewardTrainer` is trl's RewardTrainer with that batching; the pairs,
their tokenization and the per-pair loss are trl's, the rows and the collation differ. A step then holds more pairs,
so an epoch takes fewer, larger steps: at the same learning rate it moves the weights less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn
from trl import RewardTrainer
from trl.trainer.utils import pad

GROUP_COLUMNS = ["answer_ids", "winners", "losers"]


def group_by_prompt(pairs) -> list[dict]:
    """Tokenized pair rows (prompt, chosen_ids, rejected_ids, as trl prepares them) as one row per prompt: its
    distinct answers (token ids, prompt included) and, per pair, the indices of the winner and the loser among them.
    A pair given twice counts twice, as it would pair by pair; a row without a separate prompt is a group of its own."""
    groups: dict[str, dict] = {}
    for number, row in enumerate(pairs):
        key = json.dumps(row["prompt"], sort_keys=True) if row.get("prompt") else f"row {number}"
        group = groups.setdefault(key, {"answer_ids": [], "winners": [], "losers": [], "index": {}})
        positions = []
        for column in ("chosen_ids", "rejected_ids"):
            ids = tuple(row[column])
            if ids not in group["index"]:
                group["index"][ids] = len(group["answer_ids"])
                group["answer_ids"].append(list(ids))
            positions.append(group["index"][ids])
        group["winners"].append(positions[0])
        group["losers"].append(positions[1])
    return [{column: group[column] for column in GROUP_COLUMNS} for group in groups.values()]


@dataclass
class PromptGroupCollator:
    """Prompt groups -> every answer of the batch once (padded as trl's preference collator pads) and the
    winner/loser indices into those rows."""

    pad_token_id: int | None
    pad_to_multiple_of: int | None = None

    def __call__(self, groups: list[dict]) -> dict:
        sequences, winners, losers = [], [], []
        for group in groups:
            offset = len(sequences)
            sequences += [torch.tensor(ids) for ids in group["answer_ids"]]
            winners += [offset + i for i in group["winners"]]
            losers += [offset + i for i in group["losers"]]
        return {"input_ids": pad(sequences, padding_value=self.pad_token_id, padding_side="right",
                                 pad_to_multiple_of=self.pad_to_multiple_of),
                "attention_mask": pad([torch.ones_like(s) for s in sequences], padding_value=0, padding_side="right",
                                      pad_to_multiple_of=self.pad_to_multiple_of),
                "winners": torch.tensor(winners), "losers": torch.tensor(losers)}


class GroupedRewardTrainer(RewardTrainer):
    """trl's RewardTrainer on prompt groups: per_device_train_batch_size counts prompts, not pairs."""

    def __init__(self, model=None, args=None, **kwargs):
        collator = PromptGroupCollator(None, pad_to_multiple_of=getattr(args, "pad_to_multiple_of", None))
        super().__init__(model=model, args=args, data_collator=collator, **kwargs)
        # trl settles the pad token (its args, the tokenizer's, else EOS) and tells the model; pad with the same id,
        # since the model finds each answer's last token by it.
        collator.pad_token_id = self.processing_class.pad_token_id

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        from datasets import Dataset

        if "answer_ids" in dataset.column_names:  # already grouped
            return dataset
        if "margin" in dataset.column_names:
            raise ValueError(f"reward.group_by_prompt: the {dataset_name} pairs have a 'margin' column, which grouped "
                             "training does not use; train them pair by pair (group_by_prompt: false)")
        pairs = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        return Dataset.from_list(group_by_prompt(pairs))

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = GROUP_COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = outputs.logits.squeeze(-1)
        chosen, rejected = rewards[inputs["winners"]], rewards[inputs["losers"]]  # each pair's two scores
        loss = -nn.functional.logsigmoid(chosen - rejected).mean()  # trl's loss, averaged over the pairs
        if self.args.center_rewards_coefficient is not None:
            loss += self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)

        # The same figures trl logs, over the batch's pairs.
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            # Each process scores a different number of answers: gather per-process figures, not the scores.
            gather = self.accelerator.gather  # one figure per process
            self._metrics[mode]["min_reward"].append(gather(rewards.min()[None]).min().item())
            self._metrics[mode]["mean_reward"].append(gather(rewards.mean()[None]).mean().item())
            self._metrics[mode]["max_reward"].append(gather(rewards.max()[None]).max().item())
            self._metrics[mode]["accuracy"].append(gather((chosen > rejected).float().mean()[None]).mean().item())
            self._metrics[mode]["margin"].append(gather((chosen - rejected).mean()[None]).mean().item())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The loss only: a batch's scores are one per answer, not per pair, and their count differs between batches
        # and processes, so they cannot be concatenated and gathered as trl's per-pair logits are.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
