"""Load a reward model: the base as AutoModelForSequenceClassification (one scalar) with a LoRA adapter.

The score head is new, so peft trains and saves it in full beside the adapter (task type SEQ_CLS puts it in
modules_to_save); reloading the adapter restores the head.
"""

from __future__ import annotations

from pathlib import Path

import torch

from align.models import prepare_quantized_base


def load_reward_model(
    path: str,
    load_kwargs: dict,
    pad_token_id: int,
    lora_config=None,
    adapter_dir: str | Path | None = None,
    trainable: bool = True,
    gradient_checkpointing: bool = False,
    sharded: bool = False,
):
    """A fresh LoRA reward model (`lora_config`) or a trained one (`adapter_dir`). `sharded`: for training under
    FSDP or ZeRO-3, where every parameter stays in the model's dtype (see align.models.load_policy)."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    if (lora_config is None) == (adapter_dir is None):
        raise ValueError("load_reward_model: give exactly one of lora_config (new) or adapter_dir (trained)")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "score.weight newly initialised" is expected: it is what we train
    try:
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **load_kwargs)
    finally:
        logging.set_verbosity(verbosity)
    # The head reads the last non-pad token; the model must know which id is padding.
    base.config.pad_token_id = pad_token_id
    if "quantization_config" in load_kwargs and trainable:
        base = prepare_quantized_base(base, gradient_checkpointing, sharded)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable,
                                          autocast_adapter_dtype=not sharded)
    else:
        model = get_peft_model(base, lora_config, autocast_adapter_dtype=not sharded)
    if not trainable:
        model.eval()
    return model


def start_from_adapter(model, adapter_dir: str | Path) -> int:
    """Give a fresh LoRA reward model (load_reward_model with lora_config) the weights of a trained causal-LM LoRA
    adapter, the SFT model's: the reward model then starts as the SFT model's backbone, as InstructGPT's reward
    models start from the SFT model, and only its score head is new. It stays one base plus one adapter, so every
    place that loads a reward model (PPO's shared base too) loads it as before. Returns the tensors copied."""
    import json

    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    ours = model.peft_config["default"]
    for field in ("r", "lora_alpha", "target_modules"):
        theirs, mine = saved.get(field), getattr(ours, field)
        if field == "target_modules":
            theirs, mine = sorted(theirs or []), sorted(mine or [])
        if theirs != mine:
            raise ValueError(f"{adapter_dir}: its LoRA {field} is {theirs}, the reward model's is {mine}: starting "
                             "from it needs the same lora settings")
    weights = {k: v for k, v in load_file(adapter_dir / "adapter_model.safetensors").items() if ".lora_" in k}
    own = get_peft_model_state_dict(model)  # the fresh LoRA and score head, in the same naming
    strays = sorted(weights.keys() - own.keys())
    if strays or not weights:
        raise ValueError(f"{adapter_dir}: {len(strays)} of its {len(weights)} LoRA weights have no place in the "
                         f"reward model{', e.g. ' + strays[0] if strays else ''}")
    set_peft_model_state_dict(model, {**own, **weights})  # the head stays the fresh one
    return len(weights)


# ------------------------------------------------------------------------------------------------ shared base
# PPO keeps one frozen base and switches LoRA adapters on it. A reward model trained as a sequence classifier
# (backbone + LoRA + score head) runs on the causal LM's backbone with its LoRA loaded as one more adapter; the
# backbone is the same module in both classes, only the head differs.

HEAD_NAMES = ("score", "classifier")


class AdapterHead(torch.nn.Module):
    """A scalar head reading the hidden states of one named LoRA adapter on a shared causal-LM PeftModel."""

    def __init__(self, peft_model, adapter_name: str, head: torch.nn.Linear, pad_token_id: int, trainable: bool):
        super().__init__()
        self.peft_model = [peft_model]  # a list: not registered as a submodule, the head owns only itself
        self.adapter_name, self.head, self.pad_token_id, self.trainable = adapter_name, head, pad_token_id, trainable
        self.head.requires_grad_(trainable)

    def hidden_states(self, input_ids, attention_mask, position_ids=None):
        model = self.peft_model[0]
        model.set_adapter(self.adapter_name, inference_mode=not self.trainable)
        backbone = model.get_base_model().base_model
        return backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state

    def values(self, input_ids, attention_mask, position_ids=None):
        """A scalar at every position: [batch, sequence]."""
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        with torch.autocast(hidden.device.type, enabled=False):  # a float32 head stays float32 under bf16 autocast
            return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward(self, input_ids, attention_mask=None, **_):
        """Like AutoModelForSequenceClassification: the score at the rightmost token that is not padding."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        per_position = self.values(input_ids, attention_mask)
        non_pad = (input_ids != self.pad_token_id).int()
        last = (torch.arange(input_ids.shape[1], device=input_ids.device) * non_pad).argmax(-1)
        return SequenceClassifierOutput(logits=per_position[torch.arange(len(last)), last].unsqueeze(-1))


def attach_reward_adapter(peft_model, adapter_dir: str | Path, adapter_name: str, trainable: bool = False):
    """Load a reward-stage adapter (LoRA + score head) onto a causal-LM PeftModel as `adapter_name`.

    Returns (head, lora_state) where head is a float32 Linear copy of the score head and lora_state the adapter's
    LoRA tensors (so a value adapter can start from the same weights)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = reward_lora_on_causal_lm(adapter_dir, trainable)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    head_tensors = {k: v for k, v in tensors.items() if k.split(".")[-2] in HEAD_NAMES}
    lora_state = {k: v for k, v in tensors.items() if k not in head_tensors}
    weight = next((v for k, v in head_tensors.items() if k.endswith("weight")), None)
    if weight is None or weight.shape[0] != 1:
        raise ValueError(f"{adapter_dir}: no scalar score head among {sorted(head_tensors)}")
    bias = next((v for k, v in head_tensors.items() if k.endswith("bias")), None)
    head = torch.nn.Linear(weight.shape[1], 1, bias=bias is not None, device=peft_model.device, dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    add_lora_adapter(peft_model, adapter_name, config, lora_state, f"{adapter_dir}")
    return head, lora_state


def reward_lora_on_causal_lm(adapter_dir: str | Path, trainable: bool):
    """The LoRA config of a reward-stage adapter, as an adapter of the causal LM's backbone (no score head)."""
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(adapter_dir))
    if config.task_type != "SEQ_CLS":
        raise ValueError(f"{adapter_dir}: not a reward-model adapter (task type {config.task_type}, expected SEQ_CLS)")
    config.task_type, config.modules_to_save, config.inference_mode = "CAUSAL_LM", None, not trainable
    return config


def add_lora_adapter(peft_model, adapter_name: str, config, lora_state: dict, source: str) -> None:
    """Add a LoRA adapter and load its tensors, refusing tensors that do not fit (a different base model)."""
    from peft import set_peft_model_state_dict

    peft_model.add_adapter(adapter_name, config)
    result = set_peft_model_state_dict(peft_model, lora_state, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"{source}: adapter does not fit this base model (e.g. {unexpected[0]})")
