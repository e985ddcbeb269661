"""Every stage on tiny random-weight models: weights change, losses are finite, files are written, reloads work,
finished stages are skipped, and a changed recipe never silently reuses or overwrites a result."""

from __future__ import annotations

import html
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from align.config import RecipeError
from align.pipeline import run_recipe
from align.runs import read_stage


def adapter_tensors(stage_dir):
    return load_file(stage_dir / "adapter" / "adapter_model.safetensors")


def logged_losses(stage_dir, key="loss"):
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


@pytest.fixture(scope="module")
def llama_run(tiny_llama, tmp_path_factory):
    """The whole method once on tiny-llama; several tests read its outputs."""
    from align.config import parse_recipe
    from tests.conftest import tiny_recipe

    root = tmp_path_factory.mktemp("runs")
    recipe = parse_recipe(tiny_recipe(tiny_llama, root, ["sft", "reward", "dpo", "eval", "export"]))
    records = run_recipe(recipe)
    return recipe, records, root / "tiny"


def test_sft_trains_the_adapter(llama_run):
    _, records, run = llama_run
    tensors = adapter_tensors(run / "sft")
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "lora_B starts at zero; training must move it"
    losses = logged_losses(run / "sft")
    assert len(losses) >= 3 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(records["sft"]["metrics"]["train_loss"])
    assert (run / "sft" / "adapter" / "adapter_config.json").is_file()
    assert (run / "sft" / "recipe.yaml").is_file() and records["sft"]["versions"]["trl"] == "1.16.0"


def test_every_trl_stage_records_the_whole_config_it_trained_with(llama_run):
    recipe, _, run = llama_run
    for stage in ("sft", "reward", "dpo"):
        settings = json.loads((run / stage / "trl_config.json").read_text())
        # the recipe's key, align's default and trl's own default all appear
        assert settings["max_steps"] == 4 and settings["per_device_train_batch_size"] == 2, stage
        assert settings["train_sampling_strategy"] == "group_by_length" and settings["adam_beta1"] == 0.9, stage
        assert settings["output_dir"] == str(run / stage / "checkpoints"), stage
    assert json.loads((run / "dpo" / "trl_config.json").read_text())["class"] == "trl.DPOConfig"


def test_reward_saves_score_head_and_reports_heldout_accuracy(llama_run):
    _, records, run = llama_run
    tensors = adapter_tensors(run / "reward")
    assert any("score" in name for name in tensors), "the new score head must be saved beside the adapter"
    metrics = records["reward"]["metrics"]
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0 and metrics["heldout_pairs"] == 6
    assert math.isfinite(metrics["heldout_mean_margin"])


def test_reward_adapter_reloads_to_same_scores(llama_run, tiny_llama):
    from align.data import load_preferences
    from align.models import load_kwargs, load_tokenizer
    from align.reward import load_reward_model, pairwise_accuracy

    recipe, records, run = llama_run
    tokenizer = load_tokenizer(recipe.model)
    model = load_reward_model(str(tiny_llama), load_kwargs(recipe.model, recipe.quantization),
                              tokenizer.pad_token_id, adapter_dir=run / "reward" / "adapter", trainable=False)
    pairs, _ = load_preferences(recipe.reward.eval_dataset)
    again = pairwise_accuracy(model, tokenizer, pairs)
    assert again["accuracy"] == pytest.approx(records["reward"]["metrics"]["heldout_accuracy"])
    assert again["mean_margin"] == pytest.approx(records["reward"]["metrics"]["heldout_mean_margin"], abs=1e-4)


def test_a_reward_model_can_start_from_the_sft_adapter(llama_run, tiny_llama, tmp_path):
    """reward.init_from_sft: the fresh reward model's LoRA takes the SFT adapter's weights (its score head stays
    new), so it starts as the SFT model's backbone; the stage trains from there and says so."""
    from align.config import RecipeError, parse_recipe
    from align.models import load_kwargs, load_tokenizer, lora_config
    from align.reward import load_reward_model, start_from_adapter
    from tests.conftest import tiny_recipe

    recipe, _, run = llama_run
    sft = adapter_tensors(run / "sft")
    tokenizer = load_tokenizer(recipe.model)
    model = load_reward_model(str(tiny_llama), load_kwargs(recipe.model, recipe.quantization), tokenizer.pad_token_id,
                              lora_config=lora_config(recipe.lora, "SEQ_CLS"))
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items()}
    assert not torch.equal(state[next(k for k in sft if "lora_B" in k)], sft[next(k for k in sft if "lora_B" in k)])
    assert start_from_adapter(model, run / "sft" / "adapter") == len(sft)
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items()}
    assert all(torch.equal(state[name], tensor) for name, tensor in sft.items())

    wider = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["reward"], lora={"r": 8, "alpha": 16})).lora
    other = load_reward_model(str(tiny_llama), load_kwargs(recipe.model, recipe.quantization), tokenizer.pad_token_id,
                              lora_config=lora_config(wider, "SEQ_CLS"))
    with pytest.raises(ValueError, match="its LoRA r is 4, the reward model's is 8"):
        start_from_adapter(other, run / "sft" / "adapter")
    with pytest.raises(RecipeError, match="reward.init_from_sft starts the reward model from this run's SFT adapter"):
        parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["reward"], reward={"init_from_sft": True}))

    started = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward"], reward={"init_from_sft": True}))
    metrics = run_recipe(started)["reward"]["metrics"]
    assert metrics["initialised_from"].endswith("sft/adapter") and math.isfinite(metrics["train_loss"])
    trained = adapter_tensors(tmp_path / "tiny" / "reward")
    assert any("score" in name for name in trained)


def test_policy_check_samples_before_the_reward_model_and_leaves_its_training_alone(llama_run, tiny_llama,
                                                                                   tmp_path, monkeypatch):
    """The check on the SFT model's own answers samples them before the reward model loads (the sampler and the
    trained reward model together were the stage's memory peak), and on its own random stream: the reward model
    trains to the same weights as the run without the check."""
    from align.config import parse_recipe
    from align.stages import reward as reward_stage
    from tests.conftest import tiny_recipe

    _, _, unchecked = llama_run
    loaded = []
    for name, what in (("load_reward_model", "reward model"), ("load_sampler", "sampler")):
        real = getattr(reward_stage, name)
        monkeypatch.setattr(reward_stage, name, lambda *a, _real=real, _what=what, **k:
                            loaded.append(_what) or _real(*a, **k))
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward"], eval={"judges": ["align.judges:gold"]},
                                      reward={"policy_check_prompts": 4, "policy_check_samples": 2}))
    metrics = run_recipe(recipe)["reward"]["metrics"]
    assert loaded == ["sampler", "reward model"]
    assert metrics["policy_check_prompts"] == 4 and metrics["policy_check_n"] == 2
    assert metrics["policy_check_accuracy"] is None or 0 <= metrics["policy_check_accuracy"] <= 1
    from align.onpolicy import check_verdict

    assert (metrics["policy_check_trusted"], metrics["policy_check_untrusted_because"]) == check_verdict(
        metrics["policy_check_accuracy"], metrics["policy_check_best_of_n"], metrics["policy_check_greedy"],
        metrics["policy_check_intervals"], 2)
    checked, plain = adapter_tensors(tmp_path / "tiny" / "reward"), adapter_tensors(unchecked / "reward")
    assert checked.keys() == plain.keys()
    assert all(torch.equal(checked[name], plain[name]) for name in plain)


def test_align_export_of_a_dpo_run_merges_the_dpo_adapter(llama_run, tiny_llama):
    from tests.conftest import export_again_and_compare

    _, _, run = llama_run
    assert export_again_and_compare(run, tiny_llama, "dpo")["max_logit_diff"] <= 1e-3


def test_dpo_continues_from_sft_and_moves_away(llama_run):
    _, records, run = llama_run
    sft, dpo = adapter_tensors(run / "sft"), adapter_tensors(run / "dpo")
    assert sft.keys() == dpo.keys()
    assert any(not torch.equal(sft[k], dpo[k]) for k in sft), "DPO must change the adapter it starts from"
    assert records["dpo"]["inputs"]["sft"].endswith("sft")
    assert all(math.isfinite(x) for x in logged_losses(run / "dpo"))


def test_eval_reports_win_rate_on_heldout_prompts(llama_run):
    _, records, run = llama_run
    metrics = records["eval"]["metrics"]
    assert metrics["policy"] == "dpo" and metrics["baseline"] == "sft" and metrics["prompts"] == 4
    assert 0.0 <= metrics["win_rate"] <= 1.0
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"policy_answer", "baseline_answer", "policy_reward", "reference"} <= samples[0].keys()
    assert metrics["win_rate_ci_low"] <= metrics["win_rate"] <= metrics["win_rate_ci_high"]
    assert sum(metrics["wins_ties_losses"]) == 4
    assert metrics["reward_gap"] == pytest.approx(metrics["policy_mean_reward"] - metrics["baseline_mean_reward"])
    for name in ("policy", "baseline"):
        assert metrics[f"{name}_perplexity"] > 1 and 0 <= metrics[f"{name}_repetition_rate"] <= 1
        assert 0 <= metrics[f"{name}_rougeL"] <= 1 and 0 <= metrics[f"{name}_bleu"] <= 100
        assert metrics[f"{name}_median_tokens"] <= metrics[f"{name}_p90_tokens"]
    assert 0 <= metrics["reward_model_accuracy"] <= 1


def test_eval_answers_once_for_a_policy_that_kept_sfts_adapter_and_reads_the_reward_stages_accuracy(
        llama_run, tiny_llama, tmp_path, monkeypatch, capsys):
    """An online stage that stopped before training kept SFT's adapter: eval neither answers nor scores with it a
    second time, and where eval's pairs are all the reward stage's held-out pairs it reads their accuracy from
    there. A trained policy answers on its own, and fewer pairs than the stage held out are scored again."""
    import shutil

    from align.config import parse_recipe
    from align.stages import evaluate
    from tests.conftest import tiny_recipe

    _, records, run = llama_run
    held_out = {"bundled": "prefs_test", "limit": 6}  # the reward stage's eval_dataset in tiny_recipe

    def recipe_with(max_prompts):
        return parse_recipe(tiny_recipe(tiny_llama, run.parent, ["sft", "reward", "dpo", "eval", "export"],
                                        eval={"dataset": held_out, "max_prompts": max_prompts}))

    kept = tmp_path / "dpo"
    shutil.copytree(run / "sft" / "adapter", kept / "adapter")
    passes, scorings = [], []
    real_generate, real_score = evaluate.generate_answers, evaluate.score_conversations
    monkeypatch.setattr(evaluate, "generate_answers", lambda *a, **k: passes.append(1) or real_generate(*a, **k))
    monkeypatch.setattr(evaluate, "score_conversations", lambda *a, **k: scorings.append(1) or real_score(*a, **k))
    monkeypatch.setattr(evaluate, "pairwise_accuracy", lambda *a, **k: pytest.fail("held-out pairs scored again"))
    (tmp_path / "eval").mkdir()
    metrics = evaluate.run(recipe_with(6), tmp_path / "eval", {"sft": run / "sft", "reward": run / "reward",
                                                               "dpo": kept})
    assert len(passes) == 1 and len(scorings) == 1, "one pass of answers and rewards: SFT's, also the policy's"
    assert "[eval] dpo's adapter is sft's, unchanged: its answers are sft's" in capsys.readouterr().out
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(s["policy_answer"] == s["baseline_answer"] for s in samples)
    assert all(s["policy_reward"] == s["sft_reward"] for s in samples)
    assert metrics["reward_model_accuracy"] == records["reward"]["metrics"]["heldout_accuracy"]
    assert metrics["reward_model_accuracy_from"] == "reward stage"
    assert metrics["kl_to_baseline"] == pytest.approx(0.0, abs=1e-6)

    passes.clear(), scorings.clear()
    rescored = []
    monkeypatch.setattr(evaluate, "pairwise_accuracy", lambda *a, **k: rescored.append(len(a[2])) or {
        "accuracy": 0.5, "mean_margin": 0.0, "pairs": len(a[2])})
    (tmp_path / "eval-trained").mkdir()
    metrics = evaluate.run(recipe_with(4), tmp_path / "eval-trained", {"sft": run / "sft", "reward": run / "reward",
                                                                       "dpo": run / "dpo"})
    assert len(passes) == 2 and len(scorings) == 2, "a trained policy answers and is scored on its own"
    assert rescored == [4] and "reward_model_accuracy_from" not in metrics, "4 of the stage's 6 pairs: scored here"


def test_eval_perplexity_matches_the_models_own_loss(tiny_llama):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from align.config import LoraSection, ModelSection
    from align.data import token_ids
    from align.models import load_tokenizer, lora_config
    from align.stages.evaluate import answer_kl, perplexity

    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tiny_llama)))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    chat = get_peft_model(base, lora_config(LoraSection(r=2, alpha=4, dropout=0.0), "CAUSAL_LM"), adapter_name="policy")
    chat.eval()
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a colour."}]]
    answers = ["Four.", "Blue is a colour."]
    nll = tokens = 0.0
    for prompt, answer in zip(prompts, answers):  # by hand: the model's mean loss over the answer span
        context = token_ids(tokenizer, prompt, add_generation_prompt=True)
        full = token_ids(tokenizer, prompt + [{"role": "assistant", "content": answer}])
        labels = torch.tensor([[-100] * len(context) + full[len(context):]])
        with chat.disable_adapter(), torch.no_grad():
            loss = chat(input_ids=torch.tensor([full]), labels=labels).loss.item()
        nll += loss * (len(full) - len(context))
        tokens += len(full) - len(context)
    expected = math.exp(nll / tokens)
    # A fresh LoRA adapter starts as the identity, so policy and base agree, and the KL between them is 0.
    assert perplexity(chat, tokenizer, prompts, answers, "policy") == pytest.approx(expected, rel=1e-5)
    assert perplexity(chat, tokenizer, prompts, answers, "base") == pytest.approx(expected, rel=1e-5)
    own = [{"token_ids": token_ids(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": a}])[-4:]}
           for a in answers]
    assert answer_kl(chat, tokenizer, prompts, own, "base") == pytest.approx([0.0, 0.0], abs=1e-6)


def test_export_is_a_plain_model_that_reloads_and_stops(llama_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, records, run = llama_run
    model_dir = run / "export" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "README.md").is_file()
    assert records["export"]["metrics"]["max_logit_diff"] <= 1e-3
    assert not list(run.glob("export/.model.tmp-*")), "no temporary directory may be left behind"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tokenizer.chat_template and model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert not any("lora" in name for name, _ in model.named_parameters())
    card = (model_dir / "README.md").read_text()
    assert "heldout_accuracy" in card and "stages: " not in card.split("## Recipe")[0]


def test_run_writes_its_report_and_tensorboard_logs(llama_run):
    from align.report import evaluation_rows

    _, records, run = llama_run
    page = (run / "report.html").read_text()
    for stage in ("sft", "reward", "dpo"):
        png = run / "report" / f"{stage}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f'src="report/{stage}.png"' in page
        assert list((run / stage / "tensorboard").glob("events.out.tfevents.*")), f"{stage}: no tensorboard log"
    ev = records["eval"]["metrics"]
    assert f"{ev['win_rate']:.3f} [" in page and "ROUGE-L vs chosen answers" in page
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert html.escape(samples[0]["policy_answer"]) in page  # answers side by side, escaped
    card = (run / "export" / "model" / "README.md").read_text()
    assert "## Evaluation" in card and all(label in card for label, _, _ in evaluation_rows(ev))


def test_chat_and_eval_name_models_the_same_way(llama_run, capsys):
    """`align chat` takes what `align label --models` and `align eval` take: a run's stage, the run (its export,
    else its final policy), an export stage's directory, a model directory."""
    from align.chat import chat, load_chat_model

    _, _, run = llama_run
    for spec in (run / "sft", run, run / "export", run / "export" / "model"):
        chat(str(spec), None, max_new_tokens=4, temperature=0.0, top_p=1.0, lines=["What is 2 + 2?"])
        assert capsys.readouterr().out.startswith("bot> "), spec
    sft_model, _ = load_chat_model(str(run / "sft"))
    dpo_model, _ = load_chat_model(str(run / "dpo"))
    assert sft_model.active_adapter != "" and not torch.equal(*(
        next(p for name, p in model.named_parameters() if "lora_B" in name) for model in (sft_model, dpo_model)))


def test_report_escapes_model_output(tmp_path):
    from align.report import write_report

    (tmp_path / "eval").mkdir()
    metrics = {"policy": "dpo", "baseline": "sft", "prompts": 1, "win_rate": 1.0}
    (tmp_path / "eval" / "stage.json").write_text(json.dumps({"seconds": 1, "metrics": metrics}))
    (tmp_path / "eval" / "samples.jsonl").write_text(json.dumps({
        "prompt": [{"role": "user", "content": "hi"}], "policy_answer": "<script>alert(1)</script>",
        "baseline_answer": "<b>x</b>", "policy_reward": 1.0, "baseline_reward": 0.0}) + "\n")
    page = write_report(tmp_path).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<b>x</b>" not in page


def test_rerun_skips_finished_stages(llama_run):
    recipe, records, run = llama_run
    before = {s: (run / s / "stage.json").stat().st_mtime_ns for s in recipe.stages}
    again = run_recipe(recipe)
    assert {s: (run / s / "stage.json").stat().st_mtime_ns for s in recipe.stages} == before
    assert again["eval"]["metrics"] == records["eval"]["metrics"]


def test_a_knob_added_since_a_stage_finished_is_no_change_at_its_default(llama_run):
    """A stage finished by an older align, which lacked a knob the section now has: left at its default, the
    stage still counts as finished; given another value, it is refused as a changed recipe."""
    import yaml

    recipe, _, run = llama_run
    stage, knob = next((stage, name) for stage in recipe.stages
                       for name, field in type(getattr(recipe, stage)).model_fields.items()
                       if name not in getattr(recipe, stage).model_fields_set
                       and isinstance(field.default, (bool, int, float)) and field.default is not None
                       and getattr(getattr(recipe, stage), name) == field.default)
    record = json.loads((run / stage / "stage.json").read_text())
    del record["fingerprint"][stage][knob]
    (run / stage / "stage.json").write_text(json.dumps(record))
    stored = yaml.safe_load((run / stage / "recipe.yaml").read_text())
    del stored[stage][knob]
    (run / stage / "recipe.yaml").write_text(yaml.safe_dump(stored))
    before = (run / stage / "stage.json").stat().st_mtime_ns
    run_recipe(recipe)
    assert (run / stage / "stage.json").stat().st_mtime_ns == before, f"{stage} redone over the new knob {knob}"
    changed = recipe.model_copy(deep=True)
    default = type(getattr(recipe, stage)).model_fields[knob].default
    setattr(getattr(changed, stage), knob, (not default) if isinstance(default, bool) else default + 1)
    with pytest.raises(RecipeError, match=f"--from {stage}"):
        run_recipe(changed)


def test_changed_recipe_is_refused_then_redone_with_from(llama_run):
    recipe, _, run = llama_run
    changed = recipe.model_copy(deep=True)
    changed.dpo.model_extra["beta"] = 0.5
    with pytest.raises(RecipeError, match="--from dpo"):
        run_recipe(changed)
    old_adapter = adapter_tensors(run / "dpo")
    records = run_recipe(changed, start="dpo")
    assert records["dpo"]["fingerprint"]["dpo"]["beta"] == 0.5
    kept = list(run.glob("dpo.replaced-*"))
    assert kept, "the earlier DPO result must be kept aside, not deleted"
    assert torch.equal(adapter_tensors(kept[0])["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
                       old_adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])


def test_only_needs_finished_inputs(tiny_llama, make_recipe):
    recipe = make_recipe(tiny_llama, ["sft", "dpo"])
    with pytest.raises(RecipeError, match="needs the output of 'sft'"):
        run_recipe(recipe, only="dpo")


def test_gpt2_without_chat_template_trains_and_exports(tiny_gpt2, make_recipe):
    """GPT-2: Conv1D layers, no chat template (align's default), no pad token (EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = make_recipe(tiny_gpt2, ["sft", "dpo", "export"])
    records = run_recipe(recipe)
    run = __import__("pathlib").Path(recipe.output_root) / recipe.name
    assert any("c_attn.lora_A" in name for name in adapter_tensors(run / "sft"))
    exported = run / "export" / "model"
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert "### Assistant" in tokenizer.chat_template
    assert records["export"]["metrics"]["max_logit_diff"] <= 1e-3
    model = AutoModelForCausalLM.from_pretrained(exported)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_qlora_4bit_sft_on_cpu(tiny_llama, make_recipe):
    """bitsandbytes nf4 base with a trainable LoRA adapter: the QLoRA path, exercised on CPU."""
    import bitsandbytes as bnb

    from align.models import load_policy

    recipe = make_recipe(tiny_llama, ["sft", "export"], quantization={"load_in_4bit": True})
    model = load_policy(recipe)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    del model
    records = run_recipe(recipe)
    run = __import__("pathlib").Path(recipe.output_root) / recipe.name
    lora_b = [t for n, t in adapter_tensors(run / "sft").items() if "lora_B" in n]
    assert all(t.abs().sum() > 0 for t in lora_b)
    # Export merges into a float copy of the base, never into the 4-bit weights.
    assert records["export"]["metrics"]["dtype"] == "float32"
    assert read_stage(run / "export")["metrics"]["max_logit_diff"] <= 1e-3


def test_export_command_needs_only_the_run_dir(llama_run, tmp_path, capsys):
    """A run directory copied elsewhere re-exports from what it holds, with no recipe file given."""
    import shutil

    from align.cli import main

    _, _, run = llama_run
    moved = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("export", "checkpoints"))
    assert main(["export", str(moved)]) == 0
    assert (moved / "export" / "model" / "model.safetensors").is_file()
    assert read_stage(moved / "export")["metrics"]["merged_from"].startswith(str(moved))
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_env_prints_versions(capsys):
    from align.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "trl: 1.16.0" in out and "transformers: 5.23.0" in out


def test_bfloat16_export_reloads_exactly(llama_run, tmp_path):
    """16-bit exports: rounding moves logits, so the reload is checked against the merged model itself."""
    from align.stages import export

    recipe, _, run = llama_run
    bf16 = recipe.model_copy(update={"export": recipe.export.model_copy(update={"dtype": "bfloat16"})})
    metrics = export.run(bf16, tmp_path, {"sft": run / "sft", "dpo": run / "dpo"})
    assert metrics["dtype"] == "bfloat16" and metrics["max_logit_diff"] <= 1e-3
    assert metrics["merge_logit_diff"] > 0  # reported, not hidden
    import json

    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_batches_group_rows_of_similar_length(stage, tiny_llama, make_recipe, tmp_path):
    """align's default sampling puts rows of similar length in one batch: far less padding than trl's random
    batches over the same rows, and every row still trained exactly once per epoch."""
    import trl

    from align.data import load_demonstrations, load_preferences, to_dataset
    from align.models import load_tokenizer
    from align.trainers import add_lengths
    from align.trainer_settings import trl_args

    recipe = make_recipe(tiny_llama, [stage], **{stage: {"dataset": {"bundled": "sft" if stage == "sft" else
                                                                     "prefs_train", "limit": 96},
                                                         "per_device_train_batch_size": 8, "max_length": 512}})
    tokenizer = load_tokenizer(recipe.model)
    rows, _ = (load_demonstrations if stage == "sft" else load_preferences)(getattr(recipe, stage).dataset)
    trainer_class = {"sft": trl.SFTTrainer, "reward": trl.RewardTrainer, "dpo": trl.DPOTrainer}[stage]
    if stage == "reward":
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)

    def padding(sampling: str) -> tuple[int, int]:
        args = trl_args(recipe, stage, tmp_path / sampling)
        if sampling == "random":
            args.train_sampling_strategy = "random"
        trainer = trainer_class(model=model, args=args, train_dataset=to_dataset(rows), processing_class=tokenizer)
        add_lengths(trainer)
        padded = real = 0
        for batch in trainer.get_train_dataloader():
            padded += batch["attention_mask"].numel()  # DPO: chosen and rejected rows of the pairs, in one
            real += int(batch["attention_mask"].sum())
        return padded - real, real

    assert trl_args(recipe, stage, tmp_path).train_sampling_strategy == "group_by_length"
    trainer = trainer_class(model=model, args=trl_args(recipe, stage, tmp_path / "order"), train_dataset=to_dataset(rows),
                            processing_class=tokenizer)
    add_lengths(trainer)
    # The order is a function of data_seed and the epoch only: a resumed run and every process see the same one.
    first, again = trainer._get_train_sampler(), trainer._get_train_sampler()
    first.set_epoch(1)
    epoch_one = list(first)
    torch.rand(1000)  # the global RNG moves on (as a resumed run's does)
    again.set_epoch(1)
    assert list(again) == epoch_one and sorted(epoch_one) == list(range(len(rows)))
    again.set_epoch(2)
    assert list(again) != epoch_one
    grouped_padding, grouped_tokens = padding("group_by_length")
    random_padding, random_tokens = padding("random")
    assert grouped_tokens == random_tokens > 0  # the same rows, each once
    print(f"{stage}: padding tokens grouped {grouped_padding}, random {random_padding}")
    # how much less depends on the rows' spread of lengths: on the bundled pairs (96 rows) about 0.6 of random's
    assert grouped_padding < 0.75 * random_padding, (grouped_padding, random_padding)


def test_dpo_reference_log_probs_are_precomputed_from_the_starting_policy(llama_run):
    """DPO computes the reference log-probs once, before training, from the policy it starts from (the SFT
    adapter), so the first step's implicit rewards are exactly 0 and its loss is ln 2. The cached rows are
    removed once the stage is done."""
    from align.trainer_settings import trl_args

    recipe, _, run = llama_run
    assert trl_args(recipe, "dpo", run / "dpo").precompute_ref_log_probs  # align's default; the recipe is silent
    first = json.loads((run / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-5) and first["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert not (run / "dpo" / "data").exists()
