"""Sampling with vLLM for PPO rollouts and online DPO rounds (`use_vllm: true` in their recipe sections).

trl's own vLLM generation (trl.generation.vllm_generation.VLLMGeneration, what GRPOTrainer and RLOOTrainer use)
runs the engine: colocated in each training process or as a `trl vllm-serve` server, and before each rollout it
merges the active LoRA adapter into the weights it pushes to vLLM (gathering them under FSDP / ZeRO-3) and unmerges
it after. align picks the adapter, repeats the prompts as trl expects, and lays the answers out as its own decode
loop does, so nothing after sampling changes.

vLLM is a CUDA engine: `align[vllm]` installs vllm 0.30.0, the release whose pins match align's (torch 2.13,
transformers >= 5.10) within trl's supported range. Everything up to the engine call is tested on CPU.
"""

from __future__ import annotations

import importlib.util

VLLM_PACKAGE = "vllm==0.30.0"


def wants_vllm(section) -> bool:
    """Whether a stage section asks for vLLM: align's field (ppo, online_dpo) or trl's key (rloo, grpo)."""
    return bool(getattr(section, "use_vllm", False) or (getattr(section, "model_extra", None) or {}).get("use_vllm"))


def vllm_problems(recipe, stages: list[str]) -> list[str]:
    """Why the stages that ask for vLLM cannot have it here, one line each; checked before anything loads."""
    asking = [stage for stage in stages if wants_vllm(getattr(recipe, stage, None))]
    if not asking:
        return []
    where = ", ".join(f"{stage}.use_vllm" for stage in asking)
    if importlib.util.find_spec("vllm") is None:
        return [f"{where}: true, but vLLM is not installed: pip install 'align[vllm]' ({VLLM_PACKAGE}, CUDA only), "
                f"or set it to false to sample with align's own decode loop"]
    import torch

    if not torch.cuda.is_available():
        return [f"{where}: true, but vLLM needs a CUDA GPU and this machine has none; set it to false here"]
    return []


def engine_settings(section, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                    max_model_length: int | None, trust_remote_code: bool) -> dict:
    """Keyword arguments of trl's VLLMGeneration (besides model, accelerator and tokenizer) for a stage section."""
    return {
        "mode": section.vllm_mode,
        "server_base_url": section.vllm_server_base_url,
        "gpu_memory_utilization": section.vllm_gpu_memory_utilization,
        "enable_sleep_mode": section.vllm_enable_sleep_mode,
        "max_model_length": max_model_length,
        "trust_remote_code": trust_remote_code,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "max_completion_length": max_new_tokens,
    }


def start_engine(model, tokenizer, settings: dict):
    """trl's vLLM generation for `model` (a PeftModel); colocated, this loads the engine on this process's GPU."""
    from accelerate import Accelerator
    from trl.generation.vllm_generation import VLLMGeneration

    return VLLMGeneration(model=model, accelerator=Accelerator(), processing_class=tokenizer, **settings)


def sample_with_vllm(engine, model, adapter: str, prompt_ids: list[list[int]], per_prompt: int = 1
                     ) -> list[list[int]]:
    """`per_prompt` answers (token ids) to each prompt from the `adapter` policy: its weights are pushed to vLLM
    first, so the engine samples from the policy as it is now. Answers of one prompt come one after another."""
    model.set_adapter(adapter)
    engine.sync_weights()
    repeated = [ids for ids in prompt_ids for _ in range(per_prompt)]  # trl's convention: prompts come repeated
    _, completions, _, _ = engine.generate(repeated, None, num_generations=per_prompt)
    return [list(c) for c in completions]


def vllm_answers(engine, model, tokenizer, prompts: list[list[dict]], per_prompt: int, greedy: bool = False
                 ) -> list[list[dict]]:
    """Answers to conversational prompts, per prompt a list of {"text", "tokens", "ended_with_eos", "token_ids"}
    like align.generation.sample_answers; `greedy` samples at temperature 0 (vLLM's greedy decoding)."""
    from align.data import token_ids

    ids = [token_ids(tokenizer, p, add_generation_prompt=True) for p in prompts]
    temperature = engine.temperature
    engine.temperature = 0.0 if greedy else temperature
    try:
        completions = sample_with_vllm(engine, model, "default", ids, per_prompt)
    finally:
        engine.temperature = temperature
    return [[answer(tokenizer, completions[i * per_prompt + k]) for k in range(per_prompt)]
            for i in range(len(prompts))]


def answer(tokenizer, tokens: list[int]) -> dict:
    """One answer's record, as align.generation.sample_answers makes it: up to and including the first EOS."""
    eos = tokenizer.eos_token_id
    if eos in tokens:
        tokens = tokens[: tokens.index(eos) + 1]
    ended = bool(tokens) and tokens[-1] == eos
    text_tokens = tokens[:-1] if ended else tokens
    return {"text": tokenizer.decode(text_tokens, skip_special_tokens=True).strip(), "tokens": len(text_tokens),
            "ended_with_eos": ended, "token_ids": tokens}
