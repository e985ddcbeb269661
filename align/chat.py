"""Chat models: terminal chat (`align chat`), and the models that answer in the labelling app and the arena.

A model is named by any of: `embedded`, a hub id, a model directory, an export, a run directory (its export,
else its final policy adapter on the base), or one stage of a run (`runs/quickstart/sft`: that adapter).
"""

from __future__ import annotations

import threading
from pathlib import Path


def chat(target: str, system: str | None, max_new_tokens: int, temperature: float, top_p: float, lines=None) -> None:
    """Read user turns from `lines` (default: the terminal) and print the model's streamed answers."""
    import torch
    from transformers import TextStreamer

    model, tokenizer = load_chat_model(target)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    history = [{"role": "system", "content": system}] if system else []
    interactive = lines is None
    if interactive:
        print(f"Chatting with {target}. Empty line or Ctrl-D quits; /reset clears the history.")
    source = iter(lines) if lines is not None else None
    while True:
        try:
            user = input("you> ") if interactive else next(source)
        except (EOFError, StopIteration):
            break
        if not user.strip():
            break
        if user.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": user})
        enc = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        print("bot> ", end="", flush=True)
        with torch.no_grad():
            out = model.generate(
                **enc.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": answer})


def chat_model_source(spec: str):
    """What a model name in the module docstring means: (recipe, adapter directory) for a run or one of its stages,
    else (None, weights) with weights a model directory or hub id."""
    from align.runs import load_run_recipe

    path = Path(spec).expanduser()
    if (path / "model" / "config.json").is_file():  # an export stage's directory
        path = path / "model"
    run, stage = None, None
    if (path / "recipe.yaml").is_file() and not (path / "adapter").is_dir():
        run = path
        if (path / "export" / "model" / "config.json").is_file():
            path, run = path / "export" / "model", None
    elif (path / "adapter").is_dir() and (path.parent / "recipe.yaml").is_file():
        run, stage = path.parent, path.name
    if run is None:
        return None, str(path) if path.exists() else spec
    recipe = load_run_recipe(run)
    stage = stage or recipe.policy_stage()
    if not (run / stage / "adapter").is_dir():
        raise FileNotFoundError(f"{spec}: stage '{stage}' has no adapter yet (run the recipe first)")
    return recipe, run / stage / "adapter"


def resolved_chat_model(spec: str) -> str:
    """What a model name loads, as stored beside the name with each chat reply: the weights' directory or hub id
    (`embedded` is a directory in the cache), and for a run or one of its stages, its LoRA adapter on them."""
    from align.models import resolve_model_path

    recipe, source = chat_model_source(spec)
    weights = resolve_model_path(recipe.model.name_or_path if recipe is not None else str(source))
    weights = str(Path(weights).resolve()) if Path(weights).exists() else weights
    return weights if recipe is None else f"{Path(source).resolve()} on {weights}"


def load_chat_model(spec: str):
    """(model, tokenizer) ready to generate, for any model name in the module docstring."""
    from align.config import ModelSection, QuantizationSection
    from align.models import (
        load_causal_lm, load_kwargs, load_policy, load_tokenizer, on_this_process_device, resolve_model_path, sync_special_tokens,
    )

    recipe, source = chat_model_source(spec)
    if recipe is not None:
        model = load_policy(recipe, source, trainable=False)
        tokenizer = load_tokenizer(recipe.model)
    else:
        section = ModelSection(name_or_path=source)
        tokenizer = load_tokenizer(section)
        model = load_causal_lm(resolve_model_path(section.name_or_path), **load_kwargs(section, QuantizationSection()))
    sync_special_tokens(model, tokenizer)
    return on_this_process_device(model).eval(), tokenizer


class ChatModels:
    """The models of a labelling or arena session, loaded once each and shared by all annotators' requests.
    One lock: on a small machine two generations at once are each slower than one after the other."""

    def __init__(self, specs: list[str], max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
                 seed: int = 0):
        self.specs = list(dict.fromkeys(specs))
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.seed = seed
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def load(self, spec: str) -> tuple:
        if spec not in self._loaded:
            self._loaded[spec] = load_chat_model(spec)
        return self._loaded[spec]

    def reply(self, spec: str, messages: list[dict], seed: int | None = None) -> str:
        """One answer to a conversation; `seed` makes a sampled answer repeatable."""
        import torch

        with self._lock:
            model, tokenizer = self.load(spec)
            enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True).to(model.device)
            sample = self.temperature > 0
            if sample:
                torch.manual_seed(self.seed if seed is None else seed)
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                    temperature=self.temperature if sample else None, top_p=self.top_p if sample else None,
                    top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def stream(self, spec: str, messages: list[dict], seed: int):
        """The reply as it grows (each yield is the whole text so far); the last yield is the same answer
        `reply` gives for this seed."""
        import torch
        from transformers import TextIteratorStreamer

        with self._lock:
            model, tokenizer = self.load(spec)
            enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True).to(model.device)
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            sample = self.temperature > 0
            failure: list[BaseException] = []

            def generate() -> None:
                try:
                    if sample:
                        torch.manual_seed(seed)
                    with torch.no_grad():
                        model.generate(
                            **enc, max_new_tokens=self.max_new_tokens, do_sample=sample, streamer=streamer,
                            temperature=self.temperature if sample else None, top_p=self.top_p if sample else None,
                            top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                except BaseException as err:  # handed to the reader: the page shows it instead of hanging
                    failure.append(err)
                    streamer.end()

            worker = threading.Thread(target=generate, daemon=True, name="chat-stream")
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                yield text.strip()
            worker.join()
            if failure:
                raise failure[0]

    def settings(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}

    def candidates(self, item: dict) -> tuple[str, str]:
        """The two responses of a generated item. Seeds derive from the item id, so a crash and restart
        regenerates the same texts; one model sampling twice gets two different seeds (and retries a
        duplicate answer, which would make a pointless pair)."""
        base = int(item["item_id"][:8], 16) if all(c in "0123456789abcdef" for c in item["item_id"][:8]) else 0
        first = self.reply(item["model_1"], item["prompt"], seed=self.seed + base)
        for attempt in range(1, 4):
            second = self.reply(item["model_2"], item["prompt"], seed=self.seed + base + attempt)
            if second != first or item["model_1"] != item["model_2"] or self.temperature == 0:
                break
        return first, second
