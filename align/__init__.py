"""align: RLHF chat-model alignment on LoRA/QLoRA: SFT -> reward model -> DPO -> merged export."""

__version__ = "0.1.0"
