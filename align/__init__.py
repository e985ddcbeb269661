"""align: RLHF chat-model alignment on LoRA/QLoRA: SFT -> reward model -> PPO, online DPO rounds, DPO, KTO, RLOO or
GRPO -> evaluation by gold judges -> merged export; a web app for preference labels and chat feedback."""

__version__ = "0.1.0"
