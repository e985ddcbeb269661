"""Score conversations with a reward model, and the figures built on scores (pairwise accuracy, win rate).

Conversations are tokenised with `apply_chat_template(conversation)`, exactly as trl's RewardTrainer tokenises
`prompt + chosen`, so a score here means what it meant in training.
"""

from __future__ import annotations

import torch

from align.generation import longest_first


@torch.no_grad()
def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
    """One scalar reward per conversation (prompt messages + the assistant answer)."""
    device = next(model.parameters()).device
    every = [tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"] for conv in conversations]
    order = longest_first([len(ids) for ids in every])
    scores: list[float] = [0.0] * len(every)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids = [every[i] for i in rows]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):  # right padding: the head reads the last real token
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for i, score in zip(rows, logits[:, 0].float().cpu().tolist()):
            scores[i] = score
    return scores


def pairwise_accuracy(model, tokenizer, pairs: list[dict], batch_size: int = 16) -> dict:
    """Fraction of {prompt, chosen, rejected} pairs where chosen scores higher; ties count half."""
    chosen = score_conversations(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], batch_size)
    rejected = score_conversations(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {
        "accuracy": win_rate(chosen, rejected),
        "mean_margin": sum(margins) / len(margins),
        "pairs": len(pairs),
    }


def win_rate(scores: list[float], baseline_scores: list[float]) -> float:
    """Fraction of items where `scores` beats `baseline_scores`; an exact tie counts half."""
    if len(scores) != len(baseline_scores) or not scores:
        raise ValueError(f"win_rate needs two equal, non-empty lists (got {len(scores)} and {len(baseline_scores)})")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores))
    return wins / len(scores)
