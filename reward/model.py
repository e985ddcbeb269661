"""Load a reward model: the base as AutoModelForSequenceClassification (one scalar) with a LoRA adapter.

The score head is new, so peft trains and saves it in full beside the adapter (task type SEQ_CLS puts it in
modules_to_save); reloading the adapter restores the head.
"""

from __future__ import annotations

from pathlib import Path


def load_reward_model(
    path: str,
    load_kwargs: dict,
    pad_token_id: int,
    lora_config=None,
    adapter_dir: str | Path | None = None,
    trainable: bool = True,
    gradient_checkpointing: bool = False,
):
    """A fresh LoRA reward model (`lora_config`) or a trained one (`adapter_dir`)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
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
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    else:
        model = get_peft_model(base, lora_config)
    if not trainable:
        model.eval()
    return model
