"""The dataset layouts people already have, turned into align's own row shapes before the row checks in data.py.

    ShareGPT         {"conversations": [{"from": "human"|"gpt"|"system"|"user"|"assistant", "value": ...}], "system"?}
    ShareGPT pairs   the same plus "chosen"/"rejected" message objects ({"from": "gpt", "value": ...}) (LLaMA-Factory)
    Alpaca           {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
    Alpaca pairs     {"instruction", "input"?, "chosen", "rejected"} with string answers (LLaMA-Factory)
    UltraFeedback    {"instruction", "completions": [{"response", "overall_score"}, ...]}: best against the lowest
    KTO              {"prompt", "completion", "label": true|false}  (unpaired feedback; a false row is no demonstration)
    OpenAI chat      {"messages": [{"role", "content"}]} with system turns and text-part contents; OpenAI preference
                     rows {"input": {"messages"}, "preferred_output": [...], "non_preferred_output": [...]}

A dataset block's `columns` maps align's names to other ones first ({prompt: question, chosen: good}). Tool-call
turns are refused: align trains chat answers, not function calls.
"""

from __future__ import annotations

ACCEPTED_LAYOUTS = (
    "messages (OpenAI chat), prompt + completion, prompt + chosen + rejected, prompt + completion + label (KTO), "
    "ShareGPT conversations (with chosen/rejected for pairs), Alpaca instruction/input/output (chosen/rejected for "
    "pairs), UltraFeedback instruction + completions, HH-RLHF transcripts; or map columns with `columns:`"
)
CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "bot": "assistant", "model": "assistant"}
TOOL_ROLES = ("function_call", "observation", "tool", "function", "ipython")


class LayoutError(ValueError):
    """A row in a known layout that cannot be converted; data.py adds where it is."""


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """align's name <- the row's own column name, for every mapping given."""
    out = dict(row)
    for ours, theirs in columns.items():
        if theirs not in row:
            raise LayoutError(f"missing column '{theirs}' (mapped to '{ours}' by the dataset's columns:); "
                              f"has {sorted(k for k in row if not k.startswith('__'))}")
        out[ours] = out.pop(theirs)
    return out


def to_align_row(row: dict) -> dict:
    """The row in one of align's own shapes (messages / prompt+completion / prompt+chosen+rejected), or unchanged
    when it already is one or is in no layout known here."""
    if "conversations" in row:
        return from_sharegpt(row)
    if "instruction" in row and "completions" in row:
        return from_ultrafeedback(row)
    if "instruction" in row:
        return from_alpaca(row)
    if isinstance(row.get("input"), dict) and "preferred_output" in row:
        return from_openai_preference(row)
    if isinstance(row.get("messages"), list):
        return {**row, "messages": openai_messages(row["messages"], "messages")}
    return row


def openai_messages(messages: list, field: str) -> list:
    """OpenAI chat messages as {role, content}: text parts joined, tool turns refused, other keys (name, weight)
    dropped. Roles and contents are checked here, under the row's own field name (an OpenAI pair's
    'preferred_output' becomes align's 'chosen'); anything else is left for data.py's message checks to name."""
    out = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            out.append(message)
            continue
        if message.get("role") in TOOL_ROLES or message.get("tool_calls") or message.get("function_call"):
            raise LayoutError(f"field '{field}' message {i}: a tool-call turn; align trains chat answers, not tool "
                              f"use (drop these rows or their tool turns)")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise LayoutError(f"field '{field}' message {i}: only text content parts are supported")
            content = "".join(p.get("text", "") for p in content)
        if {"role", "content"} <= set(message):
            if message["role"] not in CHAT_ROLES:
                raise LayoutError(f"field '{field}' message {i}: role '{message['role']}' is not one of {CHAT_ROLES}")
            check_text(content, f"field '{field}' message {i}: content")
            message = {"role": message["role"], "content": content}
        out.append(message)
    return out


def check_text(value, what: str) -> None:
    """A message text moved from the row's own field: checked here, where that field's name is still known."""
    if not isinstance(value, str):
        raise LayoutError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise LayoutError(f"{what} is empty")


def sharegpt_turn(turn, where: str) -> dict:
    if not isinstance(turn, dict) or "value" not in turn or ("from" not in turn and "role" not in turn):
        raise LayoutError(f"{where}: expected {{'from': ..., 'value': ...}}")
    speaker = turn.get("from", turn.get("role"))
    if speaker in TOOL_ROLES:
        raise LayoutError(f"{where}: a tool-call turn ('{speaker}'); align trains chat answers, not tool use")
    if speaker not in SHAREGPT_ROLES:
        raise LayoutError(f"{where}: speaker '{speaker}' is not one of {sorted(SHAREGPT_ROLES)}")
    check_text(turn["value"], f"{where}: 'value'")
    return {"role": SHAREGPT_ROLES[speaker], "content": turn["value"]}


def from_sharegpt(row: dict) -> dict:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise LayoutError("field 'conversations' must be a non-empty list of turns")
    # turns count from 1, as rows do; a system prompt put in front below does not shift them
    messages = [sharegpt_turn(turn, f"field 'conversations' turn {i}") for i, turn in enumerate(turns, start=1)]
    first = 1 if messages[0]["role"] == "system" else 0
    for i, message in enumerate(messages[first:]):
        expected = ("user", "human") if i % 2 == 0 else ("assistant", "gpt")
        if message["role"] != expected[0]:
            speaker = turns[first + i].get("from", turns[first + i].get("role"))
            raise LayoutError(f"field 'conversations' turn {first + i + 1}: expected a {expected[1]} turn (system "
                              f"first if any, then human and gpt alternating), got '{speaker}'")
    if row.get("system") and messages[0]["role"] != "system":
        check_text(row["system"], "field 'system'")
        messages.insert(0, {"role": "system", "content": row["system"]})
    rest = {k: v for k, v in row.items() if k not in ("conversations", "system", "chosen", "rejected")}
    if "chosen" in row or "rejected" in row:  # LLaMA-Factory's ShareGPT preference layout
        answers = {}
        for field in ("chosen", "rejected"):
            if field not in row:
                raise LayoutError(f"missing field '{field}' (a ShareGPT pair has conversations, chosen, rejected)")
            value = row[field]
            answers[field] = sharegpt_turn(value, f"field '{field}'")["content"] if isinstance(value, dict) else value
        return {**rest, "prompt": messages, **answers}
    return {**rest, "messages": messages}


def alpaca_prompt(row: dict) -> list[dict]:
    if row.get("system"):
        check_text(row["system"], "field 'system'")
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    history = row.get("history") or []
    if not isinstance(history, list) or any(not isinstance(t, (list, tuple)) or len(t) != 2 for t in history):
        raise LayoutError("field 'history' must be a list of [user, assistant] pairs")
    for i, (user, assistant) in enumerate(history, start=1):
        check_text(user, f"field 'history' pair {i}: the user turn")
        check_text(assistant, f"field 'history' pair {i}: the assistant turn")
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    instruction = row["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise LayoutError("field 'instruction' must be a non-empty string")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise LayoutError("field 'input' must be a string")
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    return messages


def from_alpaca(row: dict) -> dict:
    rest = {k: v for k, v in row.items() if k not in ("instruction", "input", "output", "system", "history")}
    prompt = alpaca_prompt(row)
    if "chosen" in row or "rejected" in row:
        return {**rest, "prompt": prompt}
    if "output" not in row:
        raise LayoutError("an Alpaca row needs 'output' (or 'chosen' and 'rejected' for a pair)")
    check_text(row["output"], "field 'output'")
    return {**rest, "prompt": prompt, "completion": row["output"]}


def from_ultrafeedback(row: dict) -> dict:
    """The best-rated completion against the lowest-rated one (ratings: overall_score, else the mean of the
    fine-grained ratings)."""
    completions = row["completions"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise LayoutError("field 'completions' must list at least two rated completions")
    scored = []
    for i, completion in enumerate(completions, start=1):
        if not isinstance(completion, dict) or "response" not in completion:
            raise LayoutError(f"field 'completions' item {i}: expected {{'response': ..., 'overall_score': ...}}")
        check_text(completion["response"], f"field 'completions' item {i}: 'response'")
        score = completion.get("overall_score", completion.get("fine-grained_score"))
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise LayoutError(f"field 'completions' item {i}: no numeric 'overall_score' or 'fine-grained_score'")
        scored.append((float(score), i, completion["response"]))
    best, worst = max(scored, key=lambda s: (s[0], -s[1])), min(scored, key=lambda s: (s[0], s[1]))
    if best[0] == worst[0]:
        raise LayoutError("every completion has the same rating, so there is no better one")
    rest = {k: v for k, v in row.items() if k not in ("instruction", "completions")}
    return {**rest, "prompt": row["instruction"], "chosen": best[2], "rejected": worst[2]}


def from_openai_preference(row: dict) -> dict:
    messages = row["input"].get("messages")
    if not isinstance(messages, list):
        raise LayoutError("field 'input' must hold {'messages': [...]}")
    answers = {}
    for ours, theirs in (("chosen", "preferred_output"), ("rejected", "non_preferred_output")):
        value = row.get(theirs)
        if not isinstance(value, list) or not value:
            raise LayoutError(f"field '{theirs}' must be a non-empty list of assistant messages")
        answers[ours] = openai_messages(value, theirs)
    rest = {k: v for k, v in row.items() if k not in ("input", "preferred_output", "non_preferred_output")}
    return {**rest, "prompt": openai_messages(messages, "input.messages"), **answers}
