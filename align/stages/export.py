"""Export: merge the final chat adapter into a 16/32-bit copy of the base (never into 4-bit weights) and save a
plain Hugging Face model (safetensors, tokenizer, chat template, generation config, model card); optionally a
GGUF for llama.cpp and Ollama (align/gguf_export.py).

The export is then reloaded from disk and must reproduce the adapter model (float32 exports) or the merged model
(16-bit exports, where rounding alone moves logits): logits within `logits_atol` and the same greedy answers on the
check prompts. If not, it is not moved into place and the stage fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from align.config import Recipe, recipe_to_yaml
from align.data import token_ids
from align.generation import generate_answers
from align.models import load_tokenizer, resolve_model_path
from align.resources import release_memory
from align.runs import read_stage, replace_dir, temp_dir_for


class ExportMismatch(RuntimeError):
    """The reloaded export does not behave like the adapter model it was merged from."""


@torch.no_grad()
def _prompt_logits(model, tokenizer, prompts: list[list[dict]]) -> torch.Tensor:
    rows = []
    for prompt in prompts:
        ids = torch.tensor([token_ids(tokenizer, prompt, add_generation_prompt=True)], device=model.device)
        rows.append(model(input_ids=ids).logits[0].float().cpu())
    return torch.cat(rows)


def set_aside_unfinished(out: Path) -> list[Path]:
    """What an export killed part way left behind (a half-written merge, a GGUF in the making, or a model moved
    into place but never recorded as finished) is renamed aside with a timestamp, so it can be neither taken for
    the finished export nor silently deleted."""
    if (out / "stage.json").is_file():
        return []  # a finished export: `align export` replaces its model the usual way
    stamp = time.strftime("%Y%m%d-%H%M%S")
    leftovers = [*sorted(out.glob(".model.tmp-*")), *sorted(out.glob("gguf/.tmp-*"))]
    if (out / "model").exists():
        leftovers.append(out / "model")
    moved = []
    for leftover in leftovers:
        aside = leftover.with_name(f"{leftover.name.lstrip('.')}.unfinished-{stamp}")
        leftover.rename(aside)
        moved.append(aside)
        print(f"[export] an earlier export did not finish: {leftover} set aside as {aside}", flush=True)
    return moved


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    # --- config
    cfg = recipe.export
    policy_stage = recipe.policy_stage()
    adapter = inputs[policy_stage] / "adapter"
    dtype = getattr(torch, cfg.dtype)
    prompts = [[{"role": "user", "content": text}] for text in cfg.check_prompts]

    set_aside_unfinished(out)

    # --- model: the adapter on an un-quantised base, and its reference behaviour before merging
    tokenizer = load_tokenizer(recipe.model)
    path = resolve_model_path(recipe.model.name_or_path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                                                revision=recipe.model.revision)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    adapter_logits = _prompt_logits(model, tokenizer, prompts)
    exact = cfg.dtype == "float32"
    if exact:
        expected_answers = generate_answers(model, tokenizer, prompts, cfg.check_new_tokens)

    # --- merge; in 16 bits rounding moves logits by more than any useful tolerance, so there the merged model
    # itself becomes the reference for the save/reload check, and its gap to the adapter model is reported.
    merged = model.merge_and_unload()
    merged_logits = _prompt_logits(merged, tokenizer, prompts)
    merge_diff = (merged_logits - adapter_logits).abs().max().item()
    if exact and merge_diff > cfg.logits_atol:
        raise ExportMismatch(f"merging changed the logits by {merge_diff:.2e} (allowed {cfg.logits_atol:.0e})")
    expected_logits = adapter_logits if exact else merged_logits
    if not exact:
        expected_answers = generate_answers(merged, tokenizer, prompts, cfg.check_new_tokens)
    merged.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # generation stops at the end of the assistant turn
        pad_token_id=tokenizer.pad_token_id,
    )
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.config.eos_token_id = tokenizer.eos_token_id
    target = out / "model"
    tmp = temp_dir_for(target)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)  # carries the chat template used in training
    del merged, model, base
    release_memory()  # the adapter model and the merged copy, before the saved one is loaded beside the GGUF

    # --- check: reload from disk and compare with the reference (adapter model in float32, merged model in 16 bits)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).eval()
    reloaded_tokenizer = load_tokenizer(recipe.model.model_copy(update={"name_or_path": str(tmp)}))
    got_logits = _prompt_logits(reloaded, reloaded_tokenizer, prompts)
    got_answers = generate_answers(reloaded, reloaded_tokenizer, prompts, cfg.check_new_tokens)
    max_diff = (got_logits - expected_logits).abs().max().item()
    same_answers = [a["text"] for a in got_answers] == [a["text"] for a in expected_answers]
    if max_diff > cfg.logits_atol or not same_answers:
        raise ExportMismatch(
            f"export check failed: max |logit diff| {max_diff:.2e} (allowed {cfg.logits_atol:.0e}), "
            f"same greedy answers: {same_answers}. The export was left in {tmp} for inspection."
        )

    # --- model card, then move into place
    metrics = {
        "max_logit_diff": max_diff,
        "merge_logit_diff": merge_diff,
        "check_prompts": len(prompts),
        "dtype": cfg.dtype,
        "merged_from": str(adapter),
    }
    earlier = {s: read_stage(d)["metrics"] for s, d in inputs.items() if (d / "stage.json").is_file()}
    (tmp / "README.md").write_text(model_card(recipe, policy_stage, earlier, expected_answers, prompts))
    replace_dir(tmp, target)
    print(f"[export] merged {policy_stage} adapter into {cfg.dtype} base: {target} (max |logit diff| {max_diff:.1e})")

    # --- GGUF for llama.cpp and Ollama, checked against the merged model's answers
    del reloaded
    release_memory()  # the conversion and llama.cpp's check load their own copies
    if cfg.gguf:
        from align.gguf_export import export_gguf
        from align.models import cache_dir

        metrics.update(export_gguf(target, out / "gguf", cfg.gguf, reloaded_tokenizer, prompts, expected_answers,
                                   cfg.check_new_tokens, cfg.gguf_min_agreement, cache_dir()))
    return metrics


def model_card(recipe: Recipe, policy_stage: str, stage_metrics: dict, answers: list[dict], prompts) -> str:
    from align.report import evaluation_markdown, gold_markdown

    samples = "\n".join(f"- **{p[0]['content']}** {a['text']}" for p, a in zip(prompts, answers))
    figures = "\n".join(f"- `{stage}`: `{json.dumps(m, default=str)}`" for stage, m in stage_metrics.items())
    ev = stage_metrics.get("eval", {})
    evaluation = (f"\n## Evaluation\n{ev['prompts']} held-out prompts, judged by this run's reward model:\n\n"
                  f"{evaluation_markdown(ev)}\n") if "win_rate" in ev else ""
    if "gold" in ev:  # first: judges that did not train the model
        evaluation = (f"\n## Gold judges\n{ev['gold']['prompts']} held-out prompts; pass rate [95% interval], "
                      f"paired difference [95% interval] and p-value:\n\n{gold_markdown(ev['gold'])}\n{evaluation}")
    return f"""---
library_name: transformers
tags: [align, rlhf, {policy_stage}, lora-merged]
base_model: {recipe.model.name_or_path}
---
# {recipe.name}

{recipe.description or 'A chat model aligned with the align toolkit.'}

Base `{recipe.model.name_or_path}`, stages `{' -> '.join(recipe.stages)}`; the `{policy_stage}` LoRA adapter is
merged into a {recipe.export.dtype} copy of the base. Load it with `AutoModelForCausalLM.from_pretrained(dir)`
and talk to it with `align chat {{dir}}`; the tokenizer carries the chat template it was trained with.

{evaluation}
## Metrics
{figures or '- none recorded'}

## Greedy answers of this export
{samples}

## Recipe
```yaml
{recipe_to_yaml(recipe)}```
"""
