"""Batched greedy/sampled answers from a chat model, with the chat template the model was trained with."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16,
                     progress: bool = False) -> list[dict]:
    """Greedy answers to conversational prompts: [{"text", "tokens", "ended_with_eos"}]."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    results = []
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="generating", disable=not progress, leave=False):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                ended = tokenizer.eos_token_id in row
                tokens = row[: row.index(tokenizer.eos_token_id)] if ended else row
                results.append({
                    "text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "tokens": len(tokens),
                    "ended_with_eos": ended,
                })
    finally:
        tokenizer.padding_side = old_side
    return results
