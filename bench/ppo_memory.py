# python bench/ppo_memory.py runs/chatgpt [--load-in-4bit]
"""Weights memory of PPO's four roles: one shared base with four LoRA adapters (what align does) versus four
separate models (policy, reference, value model, reward model), each a full copy of the base with its adapter.

Counts the bytes of every distinct tensor storage the models hold (parameters and buffers), so shared weights
count once. Needs a finished run directory with sft/ and reward/ adapters (e.g. from recipes/chatgpt.yaml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def tensor_bytes(*modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def main() -> None:
    from align.models import load_kwargs, load_policy, load_tokenizer, resolve_model_path
    from align.runs import load_run_recipe
    from align.stages.ppo.steps import load_roles
    from align.reward import load_reward_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory with finished sft/ and reward/ stages")
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA: measure with the base in nf4")
    args = parser.parse_args()
    recipe = load_run_recipe(args.run)
    if args.load_in_4bit:
        recipe.quantization.load_in_4bit = True
    tokenizer = load_tokenizer(recipe.model)
    inputs = {"sft": args.run / "sft", "reward": args.run / "reward"}

    model, value, reward_scorer, _ = load_roles(recipe, inputs, tokenizer)
    shared = tensor_bytes(model, value.head, reward_scorer.head)
    del model, value, reward_scorer

    path = resolve_model_path(recipe.model.name_or_path)
    kwargs = load_kwargs(recipe.model, recipe.quantization)
    separate = [  # trainable roles are prepared for training as PPO prepares its one base (4-bit: norms in fp32)
        load_policy(recipe, adapter_dir=inputs["sft"] / "adapter", trainable=True),  # policy
        load_policy(recipe, adapter_dir=inputs["sft"] / "adapter", trainable=False),  # reference
    ]
    for trainable in (True, False):  # value model, reward model
        separate.append(load_reward_model(path, kwargs, tokenizer.pad_token_id,
                                          adapter_dir=inputs["reward"] / "adapter", trainable=trainable))
    four = tensor_bytes(*separate)
    result = {
        "model": recipe.model.name_or_path,
        "dtype": str(kwargs["dtype"]),
        "load_in_4bit": recipe.quantization.load_in_4bit,
        "shared_base_mib": round(shared / 2**20, 1),
        "four_models_mib": round(four / 2**20, 1),
        "saving": round(1 - shared / four, 3),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
