"""align's rollout decode loop: its sampler draws from the right distribution, and with the choice forced
(top_k=1) it continues left-padded prompts exactly like transformers' greedy generate, with either KV cache."""

from __future__ import annotations

import pytest
import torch

from align.generation import mask_after_eos, sample_responses, sample_tokens


def test_sampler_matches_the_softmax_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -30.0])
    draws = sample_tokens(logits.expand(200_000, -1).clone(), temperature=0.7)
    frequencies = torch.bincount(draws, minlength=6).double() / draws.numel()
    expected = (logits / 0.7).softmax(-1).double()
    assert torch.allclose(frequencies, expected, atol=0.005), (frequencies, expected)
    assert frequencies[5] == 0  # probability ~1e-19: never drawn


def test_top_k_and_top_p_keep_the_same_tokens_as_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    for top_k, top_p, warper in ((5, 1.0, TopKLogitsWarper(5)), (0, 0.8, TopPLogitsWarper(0.8))):
        warped = warper(None, logits.clone())
        allowed = torch.isfinite(warped)
        draws = torch.stack([sample_tokens(logits, 1.0, top_k, top_p) for _ in range(400)], dim=1)
        assert allowed.gather(1, draws).all()  # never outside the kept set
        seen = torch.zeros_like(allowed).scatter_(1, draws, True)
        likely = warped.softmax(-1) > 0.05  # each missed in 400 draws with probability < 1e-8
        assert (seen | ~likely).all() and likely.sum() > 64  # and sampling within it, not only the top token


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_forced_choice_continues_like_greedy_generate(tiny_llama, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [tokenizer.encode(text) for text in ("Hello there, how are", "A", "The capital of France is Paris and")]
    eos = tokenizer.eos_token_id
    query, query_mask, responses, response_mask = sample_responses(model, prompts, tokenizer.pad_token_id, eos, 12,
                                                                   top_k=1, cache=cache)
    expected = model.generate(input_ids=query, attention_mask=query_mask, do_sample=False, max_new_tokens=12,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)[:, query.shape[1]:]
    expected_mask = mask_after_eos(expected, eos)
    assert responses.shape[1] <= 12 and response_mask.sum() == expected_mask.sum()
    width = responses.shape[1]
    assert torch.equal(responses * response_mask, (expected * expected_mask)[:, :width])
    assert torch.equal(query_mask.sum(1), torch.tensor([len(p) for p in prompts]))


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_rows_end_at_their_eos_and_the_loop_stops_when_all_have(tiny_llama, cache):
    """Take as EOS a token that greedy decoding reaches early in some rows: those rows end there (EOS included,
    padding after), and once every row has ended the loop stops instead of running to max_new_tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [tokenizer.encode(text) for text in ("Hello there, how are", "A", "The capital of France is")]
    pad = tokenizer.pad_token_id
    _, _, free, _ = sample_responses(model, prompts, pad, -1, 40, top_k=1, cache=cache)  # -1: no row ever ends
    eos = int(free[0, 2])  # row 0's third token
    query, query_mask, responses, mask = sample_responses(model, prompts, pad, eos, 40, top_k=1, cache=cache)
    expected = model.generate(input_ids=query, attention_mask=query_mask, do_sample=False, max_new_tokens=40,
                              pad_token_id=pad, eos_token_id=eos)[:, query.shape[1]:]
    expected_mask = mask_after_eos(expected, eos)
    assert mask[0].sum() <= 3 and responses[0, int(mask[0].sum()) - 1] == eos
    assert torch.equal(mask.sum(1), expected_mask.sum(1))
    assert torch.equal(responses * mask, (expected * expected_mask)[:, :responses.shape[1]])
    assert (responses[mask == 0] == pad).all()
    ends = (responses == eos) & (mask == 1)
    if ends.any(1).all():  # every row ended: the loop stopped within 8 steps of the last ending
        assert responses.shape[1] < int(mask.sum(1).max()) + 8


def test_static_cache_keeps_one_length_across_calls(tiny_llama):
    """A compiled decode step recompiles for every new shape: the static cache (and so the mask) keeps the length
    of the longest call so far, and shorter prompts after longer ones still continue exactly like generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    long_prompts = [tokenizer.encode("word " * 70), tokenizer.encode("Hi")]
    short_prompts = [tokenizer.encode("A short one"), tokenizer.encode("Hello there, how are")]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    sample_responses(model, long_prompts, pad, eos, 10, top_k=1, cache="static")
    length = model._align_rollout_cache_length
    assert length % 64 == 0 and length >= len(long_prompts[0]) + 10
    query, query_mask, responses, mask = sample_responses(model, short_prompts, pad, eos, 10, top_k=1, cache="static")
    assert model._align_rollout_cache_length == length
    expected = model.generate(input_ids=query, attention_mask=query_mask, do_sample=False, max_new_tokens=10,
                              pad_token_id=pad, eos_token_id=eos)[:, query.shape[1]:]
    expected_mask = mask_after_eos(expected, eos)
    assert torch.equal(responses * mask, (expected * expected_mask)[:, :responses.shape[1]])


def test_the_lm_head_gets_a_contiguous_input_when_only_the_last_positions_are_kept(tiny_llama):
    # With a frozen head and a strided input torch's linear copies the head's weight once per row (3.6 GB at 64 rows
    # and SmolLM2's vocabulary): every causal LM align generates with loads through load_causal_lm, which prevents it.
    from transformers import AutoModelForCausalLM

    from align.models import load_causal_lm

    ids = torch.randint(0, 100, (4, 12))
    for load, contiguous in ((AutoModelForCausalLM.from_pretrained, False), (load_causal_lm, True)):
        model = load(tiny_llama).eval().requires_grad_(False)
        seen = []
        model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
        with torch.no_grad():
            kept = model(input_ids=ids, logits_to_keep=1).logits
            full = model(input_ids=ids).logits
        assert seen == [contiguous, True], load
        assert torch.allclose(kept[:, -1], full[:, -1], atol=1e-5)


def test_longest_first_batches_answer_and_score_each_prompt_in_its_own_place(tiny_llama):
    # Batches are taken longest first (less padding, and no heap growth for ever-wider shapes); the results must
    # still line up with the prompts they answer.
    from align.config import LoraSection
    from align.generation import generate_answers, longest_first, sample_answers
    from align.models import load_causal_lm, load_tokenizer, lora_config
    from align.reward import load_reward_model, score_conversations
    from align.config import ModelSection

    assert longest_first([3, 9, 1, 9, 5]) == [1, 3, 4, 0, 2]
    tokenizer = load_tokenizer(ModelSection(name_or_path=str(tiny_llama)))
    prompts = [[{"role": "user", "content": "word " * n}] for n in (3, 12, 1, 7, 20)]
    model = load_causal_lm(tiny_llama).eval()
    batched = generate_answers(model, tokenizer, prompts, 6, batch_size=2)
    alone = [generate_answers(model, tokenizer, [p], 6, batch_size=1)[0] for p in prompts]
    assert [a["token_ids"] for a in batched] == [a["token_ids"] for a in alone]
    sampled = sample_answers(model, tokenizer, prompts, 2, 6, top_k=1, batch_size=4)  # top_k=1: greedy
    assert [[a["token_ids"] for a in group] for group in sampled] == [[a["token_ids"]] * 2 for a in alone]

    scorer = load_reward_model(str(tiny_llama), {}, tokenizer.pad_token_id,
                               lora_config=lora_config(LoraSection(), "SEQ_CLS"), trainable=False).eval()
    conversations = [p + [{"role": "assistant", "content": "yes " * (5 - i)}] for i, p in enumerate(prompts)]
    scores = score_conversations(scorer, tokenizer, conversations, batch_size=2)
    one_by_one = [score_conversations(scorer, tokenizer, [c], batch_size=1)[0] for c in conversations]
    assert scores == pytest.approx(one_by_one, abs=1e-4)
    assert len(set(round(s, 4) for s in scores)) == len(scores)  # distinct, so a mix-up could not pass

    # (after the scorer, whose random head this sampling would change)
    opened = sample_answers(model, tokenizer, prompts, 1, 3, top_k=1, openings=["Sure, here"])
    opening_ids = tokenizer.encode("Sure, here", add_special_tokens=False)
    assert [group[0]["token_ids"] for group in opened] == [a["token_ids"][:3] for a in alone]  # free sample first
    for (_, answer) in opened:  # then one that starts with the opening, the model going on from it
        assert answer["token_ids"][: len(opening_ids)] == opening_ids and len(answer["token_ids"]) > len(opening_ids)
        assert answer["text"].startswith("Sure, here") and answer["tokens"] >= len(opening_ids)
