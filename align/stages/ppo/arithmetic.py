"""The arithmetic of PPO for language models, on padded [batch, response_tokens] tensors with a validity mask.

Kept free of models and I/O so each piece is unit-tested against hand-computed values: per-token rewards with the
KL penalty, GAE, whitening, the clipped policy and value losses, and the KL coefficient controllers.
"""

from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the valid entries (Bessel-corrected, as whitening in PPO implementations does)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = masked_mean((values - mean) ** 2, mask)
    return var * count / (count - 1) if count > 1 else var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale the valid entries to unit variance (and zero mean when shift_mean); padding comes back as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token per row (the EOS, or the last sampled token of a cut-off response)."""
    return (mask.long().sum(1) - 1).clamp(min=0)


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards[t] = -kl_coef * (log pi - log ref)[t], plus the sequence score on the last valid token.

    Returns (rewards, kl) where kl is the per-token estimate log pi - log ref (zero on padding)."""
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_valid_index(mask)] += scores
    return rewards, kl


def leave_one_out(scores: torch.Tensor, answers_per_prompt: int) -> torch.Tensor:
    """Each score less the mean of the other answers to its prompt. Rows come as answers_per_prompt blocks of the
    same prompts in the same order (row r answers prompt r % prompts), as the loop lays out a rollout batch."""
    blocks = scores.view(answers_per_prompt, -1)
    others = (blocks.sum(0, keepdim=True) - blocks) / (answers_per_prompt - 1)
    return (blocks - others).reshape(-1)


def balance_openings(centred: torch.Tensor, opened: torch.Tensor, answers_per_prompt: int) -> torch.Tensor:
    """Centred scores (leave_one_out's) rescaled per prompt so that the prompts where the opened answers beat the
    free ones and the prompts where they lost weigh the same in total: the policy learns where an opening fits,
    not how often it does. A prompt's weight is |mean opened - mean free|; prompts answered only one way, and
    steps where the openings only won or only lost, are left as they are."""
    blocks, opened = centred.view(answers_per_prompt, -1), opened.view(answers_per_prompt, -1).to(centred.dtype)
    free = 1 - opened
    both = (opened.sum(0) > 0) & (free.sum(0) > 0)
    margin = (blocks * opened).sum(0) / opened.sum(0).clamp(min=1) - (blocks * free).sum(0) / free.sum(0).clamp(min=1)
    won, lost = both & (margin > 0), both & (margin < 0)
    won_weight, lost_weight = margin[won].sum(), -margin[lost].sum()
    if won_weight == 0 or lost_weight == 0:
        return centred
    half = (won_weight + lost_weight) / 2
    scale = torch.ones_like(margin)
    scale[won], scale[lost] = half / won_weight, half / lost_weight
    return (blocks * scale).reshape(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's valid tokens (a prefix of the row).

    delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last valid token;
    A_t = delta_t + gamma * lam * A_{t+1}.  Returns (advantages, returns = advantages + values), zero on padding."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate: mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float) -> tuple[torch.Tensor, dict]:
    """0.5 * mean over valid tokens of max((V - R)^2, (V_clipped - R)^2), V clipped to old V +- clip_range."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped > unclipped).float(), mask).item()}
    return loss, stats


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = False):
    """log p(token) under logits at each position ([batch, steps, vocab] x [batch, steps] -> [batch, steps]), and
    the entropy of each position's distribution (no gradient) when asked; one log-softmax serves both."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return chosen, None
    with torch.no_grad():
        return chosen, -(logp.exp() * logp).sum(-1)


class FixedKLController:
    """The KL coefficient stays at its initial value."""

    def __init__(self, coef: float):
        self.value = coef

    def update(self, observed_kl: float, batch_size: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): move the coefficient towards keeping the observed KL near `target`.

    value *= 1 + clip(KL / target - 1, -0.2, 0.2) * batch_size / horizon"""

    def __init__(self, coef: float, target: float, horizon: int):
        super().__init__(coef)
        self.target, self.horizon = target, horizon

    def update(self, observed_kl: float, batch_size: int) -> None:
        if not math.isfinite(observed_kl):
            return
        error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * batch_size / self.horizon


class RunningMoments:
    """Running mean and standard deviation of scores (Chan et al. parallel update), for reward normalisation."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        batch_mean, batch_var, batch_count = values.mean().item(), values.var(unbiased=False).item(), values.numel()
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.var > 0 else 1.0

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
