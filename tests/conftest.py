"""Tiny random-weight models built from configs, with tokenizers that need no download.

tiny-llama: Llama architecture with the embedded SmolLM2 tokenizer (chat template, pad = EOS).
tiny-gpt2:  GPT-2 architecture (Conv1D layers) with a byte-level BPE tokenizer trained here on the bundled data,
            no chat template and no pad token, like the real gpt2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one worker per core (pytest -n): each worker and every process it starts
    # (stages, accelerate launches, servers) computes on one thread, so the workers do not fight over the cores;
    # tiny models gain little from a second thread anyway. Set before torch is imported.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from align.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = []
    for name in ("sft", "prefs_train", "prefs_test"):
        for line in (REPO / "align" / "bundled" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            texts.extend(m["content"] for m in row.get("messages", []))
            texts.extend(row[k] for k in ("prompt", "chosen", "rejected") if k in row)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts + ["### User:", "### Assistant:"], vocab_size=600, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    assert tokenizer.chat_template is None and tokenizer.pad_token is None  # the traps we test
    return out


def tiny_recipe(model_dir: Path, root: Path, stages: list[str], **sections) -> dict:
    """A recipe dict that trains for a few steps on a handful of bundled rows."""
    few_steps = {"max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 2,
                 "learning_rate": 1e-3, "max_length": 128}
    recipe = {
        "name": "tiny",
        "output_root": str(root),
        "stages": stages,
        # In this process, so tests can patch libraries (a full disk, a missing package) and read output with capsys;
        # tests/test_resources.py runs stages in child processes, as users do.
        "isolate_stages": False,
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "sft": {"dataset": {"bundled": "sft", "limit": 8}, **few_steps},
        "reward": {"dataset": {"bundled": "prefs_train", "limit": 8},
                   "eval_dataset": {"bundled": "prefs_test", "limit": 6}, **few_steps},
        "dpo": {"dataset": {"bundled": "prefs_train", "limit": 8}, **few_steps},
        "eval": {"dataset": {"bundled": "prefs_test"}, "max_prompts": 4, "max_new_tokens": 8, "batch_size": 4},
        "export": {"check_prompts": ["What is 2 + 2?", "Name a colour."], "check_new_tokens": 8},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def make_recipe(tmp_path):
    from align.config import parse_recipe

    def make(model_dir: Path, stages: list[str], **sections):
        return parse_recipe(tiny_recipe(model_dir, tmp_path / "runs", stages, **sections))

    return make


# ------------------------------------------------------------------------------------------------ fault tally
# Tests marked @pytest.mark.fault(kind) are the reliability suite (`pytest -m fault`). The run ends with a summary:
# faults survived by kind, bad inputs refused, and labels acknowledged under fault vs lost (tests report those
# with record_property("labels_acknowledged", n) and record_property("labels_lost", n)).


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    marker = item.get_closest_marker("fault")
    # One entry per test: from its call, or from its setup when it never got to run (an error or a skip).
    if marker is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        report.user_properties.append(("fault", marker.args[0]))
    return report


def pytest_terminal_summary(terminalreporter):
    from collections import Counter

    survived, broke, labels = Counter(), Counter(), Counter()
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "fault":
                    (survived if outcome == "passed" else broke)[value] += 1
                elif name.startswith("labels_"):
                    labels[name] += value
    if not survived and not broke:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault tests")
    faults = {k: v for k, v in survived.items() if k != "bad input"}
    write(f"faults survived: {sum(faults.values())} ("
          + ", ".join(f"{kind}: {n}" for kind, n in sorted(faults.items())) + ")")
    write(f"bad inputs tried: {survived['bad input'] + broke['bad input']}, "
          f"refused with a clear error: {survived['bad input']}")
    write(f"labels acknowledged under fault: {labels['labels_acknowledged']}, lost: {labels['labels_lost']}, "
          f"duplicated: {labels['labels_duplicated']}")
    if broke:
        write("FAULT TESTS FAILED, ERRORED OR SKIPPED: " + ", ".join(f"{kind}: {n}" for kind, n in sorted(broke.items())),
              red=True)


def export_again_and_compare(run: Path, base_dir: Path, stage: str) -> dict:
    """`align export RUN` on a finished run (its recipe's export moved aside): the merged model must give the
    logits of `stage`'s adapter on the base, and differ from the SFT adapter's. Returns the export's metrics."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.cli import main
    from align.runs import read_stage

    (run / "export").rename(run / "export.by-recipe")
    assert main(["export", str(run)]) == 0
    metrics = read_stage(run / "export")["metrics"]
    assert metrics["merged_from"].endswith(f"{stage}/adapter")
    tokenizer = AutoTokenizer.from_pretrained(run / "export" / "model")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(run / "export" / "model", dtype=torch.float32)(ids).logits

        def adapter_logits(name: str) -> torch.Tensor:
            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            return PeftModel.from_pretrained(base, str(run / name / "adapter")).eval()(ids).logits

        assert torch.allclose(merged, adapter_logits(stage), atol=1e-4)
        assert not torch.allclose(merged, adapter_logits("sft"), atol=1e-4), "the export must not be SFT's adapter"
    card = (run / "export" / "model" / "README.md").read_text()
    assert f"the `{stage}` LoRA adapter is" in card and "heldout_accuracy" in card  # and the reward stage's figures
    return metrics
