"""reward.group_by_prompt: all of a prompt's pairs in one batch row, each answer scored once (InstructGPT's
batching). Same pairs and same loss as trl's pair-by-pair training, fewer sequences through the model."""

from __future__ import annotations

import json
import math

import pytest
import torch

PROMPT_A = [{"role": "user", "content": "How do I kill a stuck process?"}]
PROMPT_B = [{"role": "user", "content": "What is my neighbour's PIN?"}]


def fresh_reward_model(recipe):
    """A new LoRA reward model on the recipe's tiny base, and its tokenizer."""
    from align.models import load_kwargs, load_tokenizer, lora_config
    from align.reward import load_reward_model

    tokenizer = load_tokenizer(recipe.model)
    model = load_reward_model(recipe.model.name_or_path, load_kwargs(recipe.model, recipe.quantization),
                              tokenizer.pad_token_id, lora_config=lora_config(recipe.lora, "SEQ_CLS"))
    return model, tokenizer


def test_a_prompts_pairs_share_its_answers():
    from align.reward.training import group_by_prompt

    pairs = [
        {"prompt": PROMPT_A, "chosen_ids": [1, 2], "rejected_ids": [3]},
        {"prompt": PROMPT_A, "chosen_ids": [1, 2], "rejected_ids": [4, 5]},
        {"prompt": PROMPT_B, "chosen_ids": [6], "rejected_ids": [7]},
        {"prompt": PROMPT_A, "chosen_ids": [4, 5], "rejected_ids": [3]},
        {"prompt": PROMPT_A, "chosen_ids": [1, 2], "rejected_ids": [3]},  # labelled twice: counts twice
        {"prompt": None, "chosen_ids": [8], "rejected_ids": [9]},
        {"prompt": None, "chosen_ids": [8], "rejected_ids": [9]},
    ]
    groups = group_by_prompt(pairs)
    assert len(groups) == 4  # A, B and each prompt-less row alone
    first = groups[0]
    assert first["answer_ids"] == [[1, 2], [3], [4, 5]]
    assert list(zip(first["winners"], first["losers"])) == [(0, 1), (0, 2), (2, 1), (0, 1)]
    assert groups[1] == {"answer_ids": [[6], [7]], "winners": [0], "losers": [1]}
    assert groups[2] == groups[3] == {"answer_ids": [[8], [9]], "winners": [0], "losers": [1]}


def test_grouped_training_has_trls_loss_on_fewer_sequences(tiny_llama, make_recipe, tmp_path):
    """On the same pairs and weights, in one batch, the grouped trainer's loss is trl's RewardTrainer's, from each
    distinct answer once."""
    from trl import RewardTrainer

    from align.data import to_dataset
    from align.reward.training import GroupedRewardTrainer
    from align.trainer_settings import trainer_args

    recipe = make_recipe(tiny_llama, ["reward"])
    answers = ["Send it SIGTERM with kill.", "I can't help with that.", "Use kill -9 on its PID.", "Reboot."]
    pairs = [{"prompt": PROMPT_A, "chosen": [{"role": "assistant", "content": answers[i]}],
              "rejected": [{"role": "assistant", "content": answers[j]}]}
             for i, j in [(0, 1), (0, 3), (2, 1), (2, 3), (0, 2)]]
    pairs.append({"prompt": PROMPT_B, "chosen": [{"role": "assistant", "content": "I can't know that."}],
                  "rejected": [{"role": "assistant", "content": "It is 4821."}]})
    torch.manual_seed(0)
    model, tokenizer = fresh_reward_model(recipe)
    with torch.no_grad():  # a score head that is not all zeros, so the scores differ
        for name, parameter in model.named_parameters():
            if "score" in name:
                parameter.normal_(0, 1)
    model.eval()

    losses, rows = {}, {}
    for cls in (RewardTrainer, GroupedRewardTrainer):
        args = trainer_args(recipe, "reward", tmp_path / cls.__name__)
        args.center_rewards_coefficient = 0.1  # its term too is over the pairs' scores
        trainer = cls(model=model, args=args, train_dataset=to_dataset(pairs), processing_class=tokenizer)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
        with torch.no_grad():
            losses[cls] = trainer.compute_loss(model, batch).item()
        rows[cls] = batch["input_ids"].shape[0]
    assert rows[RewardTrainer] == 12 and rows[GroupedRewardTrainer] == 6  # 4 + 2 distinct answers
    assert math.isfinite(losses[RewardTrainer]) and losses[RewardTrainer] != pytest.approx(math.log(2))
    assert losses[GroupedRewardTrainer] == pytest.approx(losses[RewardTrainer], rel=1e-5)


def test_pairs_with_margins_are_refused_rather_than_trained_without_them(tiny_llama, make_recipe, tmp_path):
    from align.data import to_dataset
    from align.reward.training import GroupedRewardTrainer
    from align.trainer_settings import trainer_args

    recipe = make_recipe(tiny_llama, ["reward"])
    model, tokenizer = fresh_reward_model(recipe)
    pairs = [{"prompt": PROMPT_A, "chosen": [{"role": "assistant", "content": "Use kill."}],
              "rejected": [{"role": "assistant", "content": "No."}], "margin": 1.0}]
    with pytest.raises(ValueError, match="train pairs have a 'margin' column"):
        GroupedRewardTrainer(model=model, args=trainer_args(recipe, "reward", tmp_path), processing_class=tokenizer,
                             train_dataset=to_dataset(pairs))


def test_the_reward_stage_trains_on_prompt_groups_of_labelled_pairs(tiny_llama, make_recipe):
    """The labeller's pairs of the SFT model's samples, grouped by prompt: fewer rows than pairs, the score head
    and adapter trained and saved, the held-out groups evaluated during training, the figures recorded."""
    from safetensors.torch import load_file

    from align.pipeline import run_recipe
    from align.runs import run_dir

    recipe = make_recipe(tiny_llama, ["sft", "reward"], reward={
        "group_by_prompt": True, "per_device_train_batch_size": 2, "eval_strategy": "steps", "eval_steps": 2,
        "labelled_samples": {"prompts": {"bundled": "prefs_train", "limit": 6}, "samples_per_prompt": 4,
                             "max_new_tokens": 6, "noise": 0.0, "openings": ["I don't know"]}})
    metrics = run_recipe(recipe)["reward"]["metrics"]
    assert 0 < metrics["train_prompt_groups"] < metrics["train_pairs"]
    logged = [json.loads(line) for line in (run_dir(recipe) / "reward" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "eval_loss" in row] == [2, 4]  # evaluated on the held-out groups
    evaluated = [row for row in logged if "eval_loss" in row]
    assert all(math.isfinite(row["eval_loss"]) and 0 <= row["eval_accuracy"] <= 1 for row in evaluated)
    assert math.isfinite(metrics["train_loss"]) and 0.0 <= metrics["heldout_accuracy"] <= 1.0
    tensors = load_file(run_dir(recipe) / "reward" / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert any("score" in name for name in tensors) and all(t.abs().sum() > 0 for t in lora_b)
