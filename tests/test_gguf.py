"""GGUF export (align/gguf_export.py): llama.cpp's converter, the Ollama Modelfile, and the three checks against
the merged model's greedy answers (llama.cpp on the same tokens, llama.cpp's chat completion, transformers'
GGUF loader). The quickstart's own export is converted to f16 and checked in tests/test_embedded.py; here the
embedded model goes to q8_0, and a GGUF that does not answer as the model does is refused."""

from __future__ import annotations

import pytest

from align.gguf_export import GGUFError, modelfile

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_the_modelfile_carries_the_chat_template_and_stop_tokens():
    text = modelfile("model.q8_0.gguf", CHATML, "<|im_end|>")
    assert text.startswith("FROM ./model.q8_0.gguf\n")
    assert 'TEMPLATE """' in text and "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in text
    assert text.count('PARAMETER stop "<|im_end|>"') == 1 and 'PARAMETER stop "<|im_start|>"' in text
    other = modelfile("m.gguf", "{{ messages }}", "</s>")
    assert "TEMPLATE" not in other and 'PARAMETER stop "</s>"' in other  # Ollama reads the template in the GGUF


@pytest.mark.slow
def test_the_embedded_model_as_q8_gguf_answers_as_it_does_and_a_mismatch_fails_loudly(tmp_path):
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM

    from align.config import ModelSection
    from align.generation import generate_answers
    from align.gguf_export import export_gguf
    from align.models import cache_dir, embedded_model_dir, load_tokenizer

    model_dir = embedded_model_dir()
    tokenizer = load_tokenizer(ModelSection())
    questions = ("What is the capital of France?", "What is 6 + 7?", "Can you tell me the capital of Nigeria?")
    prompts = [[{"role": "user", "content": q}] for q in questions]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected = generate_answers(model, tokenizer, prompts, 16)

    # q8_0 rounds a 135M model's close calls: judged by token agreement, and its greedy answers are reported
    q8 = export_gguf(model_dir, tmp_path / "q8", "q8_0", tokenizer, prompts, expected, 16, 0.8, cache_dir())
    assert 0.8 <= q8["gguf_llama_cpp_token_agreement"] <= 1.0 and q8["gguf_chat_template_same_answers"] == 3
    f16_bytes = sum(p.numel() * 2 for p in model.parameters())  # the f16 file holds about this much
    assert 100_000_000 < q8["gguf_bytes"] < f16_bytes * 0.6
    assert "<|im_end|>" in (tmp_path / "q8" / "Modelfile").read_text()

    wrong = [dict(answer, text="Paris.", token_ids=tokenizer("Rome, obviously.").input_ids) for answer in expected]
    with pytest.raises(GGUFError, match="does not answer as the merged model does: llama_cpp predicts") as err:
        export_gguf(model_dir, tmp_path / "bad", "q8_0", tokenizer, prompts, wrong, 16, 0.8, cache_dir())
    assert "left in" in str(err.value) and not (tmp_path / "bad" / "model.q8_0.gguf").exists()


@pytest.mark.fault("bad input")
def test_a_gguf_export_without_llama_cpp_fails_at_load_time(monkeypatch):
    import importlib.util

    from align.config import RecipeError, parse_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(RecipeError, match=r"pip install 'align\[gguf\]'"):
        parse_recipe({"name": "x", "stages": ["sft", "export"], "sft": {"dataset": "bundled:sft"},
                      "export": {"gguf": "q8_0"}})
    with pytest.raises(RecipeError, match="gguf"):
        parse_recipe({"name": "x", "stages": ["sft", "export"], "sft": {"dataset": "bundled:sft"},
                      "export": {"gguf": "q4_k"}})


def test_the_check_loads_llama_cpp_without_repacked_weights_and_restores_its_default(tmp_path):
    """Repacked q8_0 weights crash llama.cpp on CPUs with AMX; the check asks for plain buffers, for itself only."""
    llama_module = pytest.importorskip("llama_cpp.llama")
    from align.gguf_export import load_without_repacking

    class Recording:  # stands where llama_cpp.Llama does: it reads the model parameters the same way
        def __init__(self, model_path, **settings):
            self.model_path, self.params = model_path, llama_module.llama_cpp.llama_model_default_params()

    loaded = load_without_repacking(Recording, tmp_path / "model.gguf")
    assert loaded.params.use_extra_bufts is False and loaded.model_path == str(tmp_path / "model.gguf")
    assert llama_module.llama_cpp.llama_model_default_params().use_extra_bufts is True
