"""Batched greedy/sampled answers from a chat model, with the chat template the model was trained with."""

from __future__ import annotations

import torch

from align.resources import trim_allocator


@torch.no_grad()
def longest_first(lengths: list[int]) -> list[int]:
    """Indices by decreasing length. Batches taken in this order pad little, and each one fits in the memory the
    wider batch before it freed; in any other order the C allocator grows the heap again for the next wider shape."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16,
                     progress: bool = False) -> list[dict]:
    """Greedy answers to conversational prompts: [{"text", "tokens", "ended_with_eos"}]."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    order = longest_first([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])
    results: list[dict] = [{} for _ in prompts]
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="generating", disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for i, row in zip(rows, out[:, enc["input_ids"].shape[1] :].tolist()):
                ended = tokenizer.eos_token_id in row
                tokens = row[: row.index(tokenizer.eos_token_id)] if ended else row
                results[i] = {
                    "text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "tokens": len(tokens),
                    "ended_with_eos": ended,
                    "token_ids": tokens + [tokenizer.eos_token_id] if ended else tokens,
                }
            del out, enc
            trim_allocator()
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
    """Rollouts: one sampled response per prompt, as token ids, from align's own decode loop.

    Per step it runs one forward and samples with `sample_tokens`, with no logits processors or stopping
    criteria around it; rows that have ended get padding, and the loop stops once every row has ended (checked
    every 8 steps, so a GPU is not made to wait each step). cache="static" preallocates the KV cache, at one
    length for every call on the model (it only grows); on a GPU the decode step is then compiled (transformers'
    get_compiled_call: torch.compile with CUDA graphs), unless the base is 4-bit. "auto": static where the step
    compiles, else dynamic.

    Returns (prompt_ids, prompt_mask, response_ids, response_mask): tokens after the first EOS are padding and
    masked out; the EOS itself is part of the response, so ending is learned. (The cache counts its own length:
    transformers 5 models take no cache_position.)"""
    from transformers import DynamicCache, StaticCache

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    input_ids, attention = left_pad(prompt_ids, pad_token_id, device)
    rows, width = input_ids.shape
    quantizer = getattr(model, "hf_quantizer", None)  # bitsandbytes 4-bit does not compile; transformers checks too
    compiles = device.type == "cuda" and (quantizer is None or quantizer.is_compileable)
    # uncompiled, a static cache only makes every step attend over its whole length
    static = cache == "static" or (cache == "auto" and compiles)
    if static:
        # One cache length for every call, only ever growing (in steps of 64), as transformers' generate does: the
        # compiled step sees the same shapes each PPO step instead of recompiling for each batch's longest prompt.
        length = max(-(-(width + max_new_tokens) // 64) * 64, getattr(model, "_align_rollout_cache_length", 0))
        model._align_rollout_cache_length = length
        kv = StaticCache(config=model.config, max_cache_len=length)
    else:
        length, kv = width + max_new_tokens, DynamicCache(config=model.config)
    # A generated position is switched on in the mask when its token goes in. A static cache takes the whole mask
    # at every step (fixed shapes for the compiled step); flash attention reads the zeros, not only the causal mask.
    mask = torch.cat([attention, attention.new_zeros(rows, length - width)], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: each prompt counts from 0
    decode = model.get_compiled_call(None) if static and compiles else model
    was_training = model.training
    model.eval()  # with gradient checkpointing, train mode would switch the KV cache off
    try:
        logits = model(input_ids=input_ids, attention_mask=mask if static else attention, position_ids=positions,
                       past_key_values=kv, use_cache=True, logits_to_keep=1).logits[:, -1]
        responses = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        ended = torch.zeros(rows, dtype=torch.bool, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        position = positions[:, -1:]
        made = max_new_tokens
        for step in range(max_new_tokens):
            finite &= ~(torch.isnan(logits).any() | torch.isposinf(logits).any())  # -inf: a banned token, fine
            token = torch.where(ended, pad_token_id, sample_tokens(logits, temperature, top_k, top_p))
            responses[:, step] = token
            ended |= token == eos_token_id
            if step + 1 == max_new_tokens or (step % 8 == 7 and bool(ended.all())):
                made = step + 1
                break
            position = position + 1
            mask[:, width + step] = 1
            logits = decode(input_ids=token[:, None], attention_mask=mask if static else mask[:, : width + step + 1],
                            position_ids=position, past_key_values=kv, use_cache=True).logits[:, -1]
    finally:
        model.train(was_training)
    if not bool(finite):  # one check at the end, not a GPU sync per step
        raise NonFiniteLogits("the policy's next-token logits are NaN or +inf, so there is nothing to sample from")
    responses = responses[:, :made]
    response_mask = mask_after_eos(responses, eos_token_id)
    responses = responses.masked_fill(response_mask == 0, pad_token_id)
    return input_ids, attention, responses, response_mask


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), optionally restricted to the top_k tokens and to the
    smallest set whose probability reaches top_p (as transformers' TopK/TopP warpers do).

    Drawn by inverting the cumulative distribution with one uniform number per row. torch.multinomial draws an
    exponential number per vocabulary entry instead: 3M of them per step at batch 64 and 49k tokens, about 65 ms
    on the 2-core CPU, a fifth of the 135M model's whole decode step."""
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        dropped = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        dropped[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(dropped.scatter(1, order, dropped), float("-inf"))
    cumulative = logits.softmax(-1).double().cumsum(-1)  # float64: the tail of a 49k-entry sum stays exact
    uniform = torch.rand(logits.shape[0], 1, dtype=torch.float64, device=logits.device) * cumulative[:, -1:]
    # the first token whose cumulative probability exceeds the draw; zero-probability tokens are never chosen
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp(max=logits.shape[-1] - 1)


class NonFiniteLogits(RuntimeError):
    """The model's next-token logits hold NaN or +inf: its weights have blown up."""


def mask_after_eos(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (the whole row when there is none), 0 after."""
    is_eos = responses == eos_token_id
    steps = responses.shape[1]
    no_eos = torch.full_like(is_eos[:, 0], steps - 1, dtype=torch.long)
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), no_eos)
    return (torch.arange(steps, device=responses.device)[None, :] <= first_eos[:, None]).long()


def sample_answers(model, tokenizer, prompts: list[list[dict]], samples_per_prompt: int, max_new_tokens: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch_size: int = 64,
                   progress: bool = False, openings: list[str] = ()) -> list[list[dict]]:
    """`samples_per_prompt` sampled answers to each conversational prompt, through align's own decode loop (the
    rollout sampler): per prompt a list of {"text", "tokens", "ended_with_eos", "token_ids"} like
    generate_answers'. A prompt's samples are drawn in the same batch, so similar lengths pad little. Then one
    more answer per opening, the model continuing a reply that starts with it (text and counts include it)."""
    from tqdm.auto import tqdm

    from align.data import token_ids

    prompt_ids = [token_ids(tokenizer, p, add_generation_prompt=True) for p in prompts]
    out: list[list[dict]] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    passes = [([], samples_per_prompt)] + [(tokenizer.encode(o, add_special_tokens=False), 1) for o in openings]
    for opening_ids, count in passes:
        ids = [p + opening_ids for p in prompt_ids]
        flat = [i for i in longest_first([len(x) for x in ids]) for _ in range(count)]
        for start in tqdm(range(0, len(flat), batch_size), desc="sampling", disable=not progress, leave=False):
            chunk = flat[start : start + batch_size]
            _, _, responses, mask = sample_responses(model, [ids[i] for i in chunk], tokenizer.pad_token_id, eos,
                                                     max_new_tokens, temperature, top_k, top_p)
            for i, row, row_mask in zip(chunk, responses.tolist(), mask.tolist()):
                tokens = opening_ids + [t for t, m in zip(row, row_mask) if m]
                ended = len(tokens) > len(opening_ids) and tokens[-1] == eos
                text_tokens = tokens[:-1] if ended else tokens
                out[i].append({"text": tokenizer.decode(text_tokens, skip_special_tokens=True).strip(),
                               "tokens": len(text_tokens), "ended_with_eos": ended, "token_ids": tokens})
            del responses, mask
            trim_allocator()
    return out


def as_rollout(prompt_ids: list[list[int]], completions: list[list[int]], pad_token_id: int, eos_token_id: int,
               device) -> tuple:
    """Token-id answers (vLLM's, or continuations of an opening) in the layout of sample_responses: (prompt_ids,
    prompt_mask, response_ids, response_mask), prompts left-padded, responses right-padded, everything after the
    first EOS masked out."""
    input_ids, attention = left_pad(prompt_ids, pad_token_id, device)
    width = max(1, max(len(c) for c in completions))
    responses = torch.full((len(completions), width), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(completions):
        if ids:
            responses[row, : len(ids)] = torch.tensor(ids)
    responses = responses.to(device)
    response_mask = mask_after_eos(responses, eos_token_id)
    # a row vLLM cut at max_new_tokens is real tokens up to its length, not padding
    lengths = torch.tensor([len(c) for c in completions], device=device)
    response_mask = response_mask * (torch.arange(width, device=device)[None] < lengths[:, None])
    return input_ids, attention, responses.masked_fill(response_mask == 0, pad_token_id), response_mask
