"""Reward models: a sequence-classification head on the chat base, trained on preference pairs, and scoring.

Built on align's core layer only (preparing a 4-bit base in align.models, batch order in align.generation), never on
the stages; they pass in the resolved model path, load kwargs and tokenizer, so the chat template used for scoring
is the one used in training.
"""

from align.reward.model import AdapterHead, attach_reward_adapter, load_reward_model, start_from_adapter
from align.reward.scoring import pairwise_accuracy, score_conversations, win_rate

__all__ = [
    "AdapterHead", "attach_reward_adapter", "load_reward_model", "pairwise_accuracy", "score_conversations",
    "start_from_adapter", "win_rate",
]
