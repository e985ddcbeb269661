"""vLLM sampling (use_vllm) up to the engine call: vLLM is a CUDA engine and its release that matches align's pins
does not run on this CPU, so these tests check what align builds around it against trl's real VLLMGeneration API
and align's own decode loop; the engine itself runs only on a GPU (docs/distributed.md)."""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch

from align.config import RecipeError, parse_recipe
from align.generation import as_rollout
from align.vllm_sampling import answer, engine_settings, vllm_problems, wants_vllm
from tests.conftest import tiny_recipe


def test_every_online_stage_takes_the_same_vllm_keys_and_trl_stages_pass_them_to_trl(tiny_llama, tmp_path):
    from align.trainer_settings import trl_args

    prompts = {"dataset": {"bundled": "sft", "limit": 4}}
    vllm = {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gpu-box:8000"}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "online_dpo", "ppo", "grpo"],
                                      online_dpo={**prompts, **vllm}, ppo={**prompts, **vllm},
                                      grpo={**prompts, **vllm, "num_generations": 2}))
    assert all(wants_vllm(getattr(recipe, stage)) for stage in ("online_dpo", "ppo", "grpo"))
    assert recipe.ppo.vllm_mode == "server" and recipe.online_dpo.vllm_server_base_url == "http://gpu-box:8000"
    grpo = trl_args(recipe, "grpo", tmp_path / "grpo")  # trl's own GRPOConfig carries them
    assert (grpo.use_vllm, grpo.vllm_mode, grpo.vllm_server_base_url) == (True, "server", "http://gpu-box:8000")
    # online_dpo's vLLM keys are align's (its trainer, DPOTrainer, has none): they never reach DPOConfig
    dpo = trl_args(recipe, "online_dpo", tmp_path / "online_dpo")
    assert not hasattr(dpo, "vllm_mode")
    with pytest.raises(RecipeError, match="vllm_mode"):
        parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "ppo"], ppo={**prompts, "vllm_mode": "remote"}))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_a_recipe_asking_for_vllm_where_there_is_none_fails_before_anything_loads(tiny_llama, tmp_path):
    from align.pipeline import plan

    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "ppo"],
                                      ppo={"dataset": {"bundled": "sft", "limit": 4}, "use_vllm": True}))
    assert vllm_problems(recipe, ["sft"]) == []
    with pytest.raises(RecipeError, match=r"ppo\.use_vllm: true, but vLLM is not installed: pip install "
                                          r"'align\[vllm\]' \(vllm==0\.30\.0"):
        plan(recipe)
    assert not (tmp_path / "tiny").exists()  # refused before the run directory was made


def test_the_engine_settings_are_arguments_trl_vllm_generation_takes(tiny_llama, tmp_path):
    from trl.generation.vllm_generation import VLLMGeneration

    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "ppo"], ppo={
        "dataset": {"bundled": "sft"}, "use_vllm": True, "vllm_gpu_memory_utilization": 0.5, "top_k": 20}))
    settings = engine_settings(recipe.ppo, 48, 0.8, 20, 0.95, 512, False)
    bound = inspect.signature(VLLMGeneration.__init__).bind(None, model=None, accelerator=None,
                                                            processing_class=None, **settings)
    assert bound.arguments["gpu_memory_utilization"] == 0.5 and bound.arguments["max_completion_length"] == 48
    assert (bound.arguments["temperature"], bound.arguments["top_k"], bound.arguments["top_p"]) == (0.8, 20, 0.95)


def test_vllm_answers_take_the_layout_of_align_own_rollouts(tiny_llama):
    """What vLLM returns (token ids up to EOS, or max_new_tokens of them) becomes exactly the tensors align's decode
    loop makes, so scoring, log-probs and the PPO update read vLLM's rollouts unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.generation import sample_responses

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [tokenizer.encode(text) for text in ("Hello there", "What is two plus two?", "Hi")]
    torch.manual_seed(0)
    expected = sample_responses(model, prompts, pad, eos, max_new_tokens=6, top_k=1)
    # the completions an engine hands back: each answer's tokens, ending at its EOS (or cut at max_new_tokens)
    completions = [[t for t, m in zip(row, mask) if m] for row, mask in zip(expected[2].tolist(), expected[3].tolist())]
    # make one answer end early with EOS, as vLLM stops a sequence there
    completions[0] = completions[0][:2] + [eos]
    got = as_rollout(prompts, completions, pad, eos, torch.device("cpu"))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])  # prompts left-padded alike
    assert got[3][0].tolist() == [1, 1, 1, 0, 0, 0] and got[2][0].tolist()[:3] == completions[0]
    assert torch.equal(got[2][1:], expected[2][1:]) and torch.equal(got[3][1:], expected[3][1:])

    record = answer(tokenizer, completions[0])
    assert record["ended_with_eos"] and record["tokens"] == 2 and record["token_ids"] == completions[0]
    assert record["text"] == tokenizer.decode(completions[0][:2], skip_special_tokens=True).strip()
