"""Terminal chat with a model directory (an export, a run directory, or any Hugging Face causal LM)."""

from __future__ import annotations

from pathlib import Path


def resolve_chat_model(target: str) -> Path:
    path = Path(target).expanduser()
    for candidate in (path, path / "model", path / "export" / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{target}: no model here (looked for config.json in it, model/ and export/model/); "
        f"export a run first with `align export RUN_DIR`"
    )


def chat(target: str, system: str | None, max_new_tokens: int, temperature: float, top_p: float, lines=None) -> None:
    """Read user turns from `lines` (default: the terminal) and print the model's streamed answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    from align.models import DEFAULT_CHAT_TEMPLATE

    model_dir = resolve_chat_model(target)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    if torch.cuda.is_available():
        model.to("cuda")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    history = [{"role": "system", "content": system}] if system else []
    interactive = lines is None
    if interactive:
        print(f"Chatting with {model_dir}. Empty line or Ctrl-D quits; /reset clears the history.")
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
