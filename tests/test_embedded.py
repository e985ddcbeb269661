"""End to end on the real embedded SmolLM2-135M-Instruct: the quickstart recipe, cut down to a few minutes."""

from __future__ import annotations

import json

import pytest

from align.cli import main
from tests.conftest import REPO


@pytest.mark.slow
def test_quickstart_recipe_end_to_end_on_embedded_model(tmp_path, capsys):
    from align.chat import chat

    root = tmp_path / "runs"
    code = main([
        "run", str(REPO / "recipes" / "quickstart.yaml"), f"output_root={root}",
        "sft.dataset.limit=24", "reward.dataset.limit=24", "reward.eval_dataset.limit=16",
        "reward.labelled_samples.max_prompts=8", "reward.policy_check_prompts=8",
        # a reward model trained for a few steps fails the reward stage's check: go on, to run the rounds too
        "online_dpo.require_trusted_reward_model=false", "online_dpo.rounds=1", "online_dpo.prompts_per_round=8", "online_dpo.max_new_tokens=24",
        "eval.max_prompts=8", "eval.max_new_tokens=24", "eval.kl_prompts=4",
    ])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "reward model held-out pairwise accuracy:" in out and "online_dpo win rate vs sft" in out
    assert "reward model on the SFT model's own answers" in out and "gold judges on 8 held-out prompts" in out
    assert "pairs of SFT samples labelled there by simulated-labeller" in out
    assert (root / "quickstart" / "labels.db").is_file()
    assert "online_dpo start" in out and "online_dpo round-1" in out
    model_dir = root / "quickstart" / "export" / "model"
    assert (model_dir / "model.safetensors").is_file()
    # The GGUF answers the held-out check questions as the merged model does, through llama.cpp and its template.
    export = json.loads((root / "quickstart" / "export" / "stage.json").read_text())["metrics"]
    assert export["gguf_llama_cpp_same_greedy_answers"] == export["gguf_chat_template_same_answers"] == 3
    assert export["gguf_llama_cpp_token_agreement"] == export["gguf_transformers_token_agreement"] == 1.0
    gguf = root / "quickstart" / "export" / "gguf"
    assert (gguf / "model.f16.gguf").read_bytes()[:4] == b"GGUF" and export["gguf_bytes"] > 200_000_000
    modelfile = (gguf / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.f16.gguf") and "<|im_end|>" in modelfile

    # The merged export still knows its facts and stops at EOS (the chat loop would hang on max tokens otherwise).
    chat(str(root / "quickstart"), None, max_new_tokens=40, temperature=0.0, top_p=1.0,
         lines=["What is the capital of France?"])
    answer = capsys.readouterr().out
    assert "Paris" in answer
