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
                    "token_ids": tokens + [tokenizer.eos_token_id] if ended else tokens,
                })
    finally:
        tokenizer.padding_side = old_side
    return results


def left_pad(prompt_ids: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one tensor, so that every response starts at the same column."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids.to(device), attention.to(device)


@torch.no_grad()
def sample_responses(model, prompt_ids: list[list[int]], pad_token_id: int, eos_token_id: int, max_new_tokens: int,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cache: str = "dynamic"):
    """Rollouts: one sampled response per prompt, as token ids.

    The rollout path is token ids in, token ids out, so a faster engine (static cache + compiled decoding, or an
    inference server) can replace `generate` here without touching the PPO update. Returns (prompt_ids,
    prompt_mask, response_ids, response_mask): tokens after the first EOS are padding and masked out; the EOS
    itself is part of the response, so ending is learned."""
    from transformers import GenerationConfig

    input_ids, attention = left_pad(prompt_ids, pad_token_id, next(model.parameters()).device)
    # A fresh config: the model's own (repetition_penalty, top_k=50, min_p, ...) would make the samples come from
    # another distribution than the one whose log-probs PPO computes.
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=top_k,  # 0 = off
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        cache_implementation=None if cache == "dynamic" else cache,
    )
    was_training = model.training
    model.eval()  # with gradient checkpointing, train mode would switch the KV cache off
    try:
        output = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
    finally:
        model.train(was_training)
    responses = output[:, input_ids.shape[1] :]
    response_mask = mask_after_eos(responses, eos_token_id)
    responses = responses.masked_fill(response_mask == 0, pad_token_id)
    return input_ids, attention, responses, response_mask


def mask_after_eos(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (the whole row when there is none), 0 after."""
    is_eos = responses == eos_token_id
    steps = responses.shape[1]
    no_eos = torch.full_like(is_eos[:, 0], steps - 1, dtype=torch.long)
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), no_eos)
    return (torch.arange(steps, device=responses.device)[None, :] <= first_eos[:, None]).long()
