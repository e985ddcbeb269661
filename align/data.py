"""Datasets: read rows from files, the hub or the bundled sets, normalise them, and reject bad rows up front.

Every supported layout (align/formats.py: ShareGPT, Alpaca, UltraFeedback, OpenAI, KTO, HH-RLHF, mapped columns)
becomes one of the conversational shapes that the TRL trainers accept:
  demonstrations  {"prompt": [messages], "completion": [assistant message]}
  preferences     {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}
  feedback        {"prompt": [messages], "completion": [assistant message], "label": true | false}   (KTO)
so the chat template is applied by the same tokenizer in SFT, reward and DPO. Errors name the source, the row
(1-based, as a person counts lines) and the field, and are raised before any model is loaded.
"""

from __future__ import annotations

import csv
import json
import re
from importlib import resources
from pathlib import Path

from align.config import DataSource
from align.formats import ACCEPTED_LAYOUTS, CHAT_ROLES, LayoutError, rename_columns, to_align_row

ROW_NUMBER = "__row_number__"  # set by the JSONL reader: the file line of the row
MAX_ERRORS_SHOWN = 5


class DataError(ValueError):
    """Rows that cannot be trained on; the message names file, row and field."""


NO_LABEL_ROWS = {
    "preferences": "no A/B judgments or corrections yet (ties and both-bad are not training pairs)",
    "demonstrations": "no corrected replies yet (a correction in the chat-feedback tab is a demonstration)",
    "feedback": "no rated replies yet (thumbs up or down in the chat-feedback tab)",
    "prompts": "no prompts yet",
}


# ------------------------------------------------------------------------------------------------ reading


def bundled_path(name: str) -> Path:
    path = Path(str(resources.files("align") / "bundled" / f"{name}.jsonl"))
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise DataError(f"bundled:{name}: no such bundled dataset (available: {', '.join(available)})")
    return path


def read_rows(source: DataSource, kind: str = "preferences") -> tuple[list[dict], str]:
    """Rows as plain dicts, and a name for error messages. JSONL rows remember their line number (`ROW_NUMBER`)
    so errors point at the line a person would open, blank lines included. A label database serves the rows of
    `kind` it holds (judgments and corrections as pairs, corrections as demonstrations, ratings as feedback)."""
    if source.hub:
        import datasets

        try:
            rows = list(datasets.load_dataset(source.hub, source.subset, split=source.split))
        except Exception as err:  # network, missing split, unknown name: say which dataset failed
            raise DataError(f"hub:{source.hub}: could not load split '{source.split}': {err}") from None
        where = f"hub:{source.hub}[{source.split}]"
    elif source.labels:
        from align.labelling.store import LabelError, read_label_rows

        where = f"labels:{source.labels}"
        try:
            rows = read_label_rows(source.labels, kind)
        except LabelError as err:
            raise DataError(str(err)) from None
        if not rows:
            raise DataError(f"{where}: {NO_LABEL_ROWS[kind]}")
    else:
        path = bundled_path(source.bundled) if source.bundled else Path(source.path).expanduser()
        where = str(path) if source.path else f"bundled:{source.bundled}"
        rows = read_file(path)
    if source.limit:
        rows = rows[: source.limit]
    if not rows:
        raise DataError(f"{where}: no rows")
    return rows, where


def read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: row {number}: not valid JSON ({err.msg})") from None
            if isinstance(row, dict):
                row[ROW_NUMBER] = number
            rows.append(row)
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("rows", data.get("data")), list):
            data = data.get("rows", data.get("data"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return data
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".db", ".sqlite", ".sqlite3"):
        raise DataError(f"{path}: a database file; for labels collected with `align label` write labels: {path}")
    raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json, .csv or .parquet)")


# ------------------------------------------------------------------------------------------------ normalising


def _messages(value, where: str, field: str) -> list[dict]:
    """A list of {role, content} messages, checked."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value, start=1):  # counted from 1, as rows and a person count them
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(f"{where}: field '{field}' message {i}: expected {{'role': ..., 'content': ...}}")
        if msg["role"] not in CHAT_ROLES:
            raise DataError(f"{where}: field '{field}' message {i}: role '{msg['role']}' is not one of {CHAT_ROLES}")
        if not isinstance(msg["content"], str):
            raise DataError(f"{where}: field '{field}' message {i}: content must be a string")
        if not msg["content"].strip():
            raise DataError(f"{where}: field '{field}' message {i}: content is empty")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _text(row: dict, field: str, where: str) -> str:
    if field not in row or row[field] is None:
        raise DataError(f"{where}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def prompt_messages(row: dict, where: str) -> list[dict]:
    if isinstance(row.get("prompt"), list):
        return _messages(row["prompt"], where, "prompt")
    return [{"role": "user", "content": _text(row, "prompt", where)}]


def answer_messages(row: dict, field: str, where: str) -> list[dict]:
    """One assistant message, from a string or a message list whose last message is the assistant's."""
    value = row.get(field)
    if isinstance(value, list):
        msgs = _messages(value, where, field)
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: field '{field}' must end with an assistant message")
        return msgs[-1:]
    return [{"role": "assistant", "content": _text(row, field, where)}]


def check_turn_order(messages: list[dict], where: str, field: str) -> None:
    """system? then user/assistant alternating, starting with user."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            offset = i + (len(messages) - len(body)) + 1
            if field == "prompt" and offset == len(messages):  # callers check a prompt with its answer appended
                raise DataError(f"{where}: field 'prompt' must end with a user message (the one the answer replies "
                                f"to), got '{messages[-2]['role']}'")
            raise DataError(
                f"{where}: field '{field}' message {offset}: expected role '{expected}' (system first if any, then "
                f"user and assistant alternating), got '{msg['role']}'"
            )


def parse_hh_transcript(text: str, where: str, field: str) -> list[dict]:
    """Anthropic HH-RLHF transcript '\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages."""
    messages = []
    for chunk in text.split("\n\nHuman: ")[1:] if text.startswith("\n\nHuman: ") else []:
        parts = chunk.split("\n\nAssistant: ")
        messages.append({"role": "user", "content": parts[0]})
        messages.extend({"role": "assistant", "content": p} for p in parts[1:])
    if not messages:
        raise DataError(f"{where}: field '{field}' looks like neither a response nor an HH-RLHF transcript")
    return _messages(messages, where, field)


def is_hh_row(row: dict) -> bool:
    chosen = row.get("chosen")
    return "prompt" not in row and isinstance(chosen, str) and chosen.startswith("\n\nHuman: ")


def demonstration(row: dict, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'messages' or 'prompt'/'completion'")
    if "label" in row and feedback_label(row, where) is False:
        raise DataError(f"{where}: a row labelled false is an answer people did not want, not a demonstration; "
                        "train on it in the kto stage")
    if "messages" in row:
        messages = _messages(row["messages"], where, "messages")
        check_turn_order(messages, where, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant message (the demonstration)")
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if "prompt" in row or "completion" in row:
        prompt = prompt_messages(row, where)
        check_turn_order(prompt + [{"role": "assistant", "content": "x"}], where, "prompt")
        return {"prompt": prompt, "completion": answer_messages(row, "completion", where)}
    raise DataError(f"{where}: missing field 'messages' (or 'prompt' and 'completion'); has {sorted(row)}. "
                    f"Layouts read: {ACCEPTED_LAYOUTS}")


def preference(row: dict, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'prompt', 'chosen', 'rejected'")
    if is_hh_row(row):
        chosen = parse_hh_transcript(row["chosen"], where, "chosen")
        rejected = parse_hh_transcript(_text(row, "rejected", where), where, "rejected")
        if chosen[:-1] != rejected[:-1]:
            raise DataError(f"{where}: 'chosen' and 'rejected' transcripts differ before their last turn")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        if not prompt or chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant":
            raise DataError(f"{where}: HH-RLHF transcripts must end with an Assistant turn after a Human turn")
    else:
        implicit = isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list)
        for field in ("chosen", "rejected") if implicit else ("prompt", "chosen", "rejected"):
            if field not in row:
                raise DataError(f"{where}: missing field '{field}' (a preference row has prompt, chosen, rejected); "
                                f"has {sorted(row)}. Layouts read: {ACCEPTED_LAYOUTS}")
        if implicit and not row.get("prompt"):
            # Implicit prompt: two full conversations sharing everything but the last turn.
            full_chosen = _messages(row["chosen"], where, "chosen")
            full_rejected = _messages(row["rejected"], where, "rejected")
            if full_chosen[:-1] != full_rejected[:-1]:
                raise DataError(f"{where}: 'chosen' and 'rejected' conversations differ before their last turn")
            prompt = full_chosen[:-1]
        else:
            prompt = prompt_messages(row, where)
        chosen = answer_messages(row, "chosen", where)
        rejected = answer_messages(row, "rejected", where)
    check_turn_order(prompt + chosen, where, "prompt")
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical, so the pair teaches nothing")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def feedback_label(row: dict, where: str) -> bool:
    value = row.get("label")
    if isinstance(value, bool):
        return value
    if value in (0, 1) or (isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1")):
        return str(value).strip().lower() in ("1", "true")
    raise DataError(f"{where}: field 'label' must be true (a wanted answer) or false (an unwanted one), "
                    f"got {value!r}")


def feedback(row: dict, where: str) -> dict:
    """Unpaired feedback for KTO: one answer and whether people wanted it."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'prompt', 'completion', 'label'")
    if "label" not in row:
        raise DataError(f"{where}: missing field 'label' (a feedback row has prompt, completion and label "
                        f"true/false); has {sorted(row)}. Layouts read: {ACCEPTED_LAYOUTS}")
    label = feedback_label(row, where)
    if "messages" in row:
        messages = _messages(row["messages"], where, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with the assistant answer that was rated")
        prompt, completion = messages[:-1], messages[-1:]
    else:
        prompt, completion = prompt_messages(row, where), answer_messages(row, "completion", where)
    check_turn_order(prompt + completion, where, "prompt")
    return {"prompt": prompt, "completion": completion, "label": label}


ROW_FIELDS = ("prompt", "messages", "completion", "chosen", "rejected", "label")


def prompt_row(row: dict, where: str) -> dict:
    """A prompt for online RL (PPO) from any row that has one: {prompt}, {messages} (a trailing assistant turn is
    dropped), demonstrations, or preference pairs. Other fields (e.g. a reference answer) ride along for reward
    functions."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'prompt' or 'messages'")
    if "prompt" in row and row["prompt"] is not None:
        prompt = prompt_messages(row, where)
    elif "messages" in row:
        prompt = _messages(row["messages"], where, "messages")
        if prompt[-1]["role"] == "assistant":
            prompt = prompt[:-1]
        if not prompt:
            raise DataError(f"{where}: field 'messages' has no user turn to answer")
    elif "chosen" in row:
        prompt = preference(row, where)["prompt"]
    else:
        raise DataError(f"{where}: missing field 'prompt' (or 'messages'); has {sorted(row)}")
    check_turn_order(prompt + [{"role": "assistant", "content": "x"}], where, "prompt")
    extras = {k: v for k, v in row.items() if k not in ROW_FIELDS and k != ROW_NUMBER}
    return {"prompt": prompt, **extras}


def normalise(rows: list[dict], source_name: str, kind: str, columns: dict[str, str] | None = None) -> list[dict]:
    """Convert every row (mapped columns first, then a known layout), collecting the first few errors so the
    user can fix them in one go."""
    convert = {"demonstrations": demonstration, "preferences": preference, "prompts": prompt_row,
               "feedback": feedback}[kind]
    out, errors = [], []
    for index, row in enumerate(rows, start=1):
        number = row.pop(ROW_NUMBER, index) if isinstance(row, dict) else index
        where = f"{source_name}: row {number}"
        try:
            if isinstance(row, dict):
                row = to_align_row(rename_columns(row, columns) if columns else row)
            out.append(convert(row, where))
        except LayoutError as err:
            errors.append(their_names(f"{where}: {err}", columns))
        except DataError as err:
            errors.append(their_names(str(err), columns))
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} of {len(rows)} rows are not valid {kind}:\n  {shown}{more}")
    return out


def their_names(message: str, columns: dict[str, str] | None) -> str:
    """An error about a mapped column names the file's column, the one the user can find and fix."""
    if not columns:
        return message
    return re.sub(r"field '(\w+)'", lambda m: f"field '{columns[m[1]]}' (mapped to '{m[1]}')" if m[1] in columns
                  else m[0], message)


def load_rows(source: DataSource, kind: str) -> tuple[list[dict], str]:
    rows, where = read_rows(source, kind)
    return normalise(rows, where, kind, source.columns), where


def load_demonstrations(source: DataSource) -> tuple[list[dict], str]:
    return load_rows(source, "demonstrations")


def load_preferences(source: DataSource) -> tuple[list[dict], str]:
    return load_rows(source, "preferences")


def load_prompts(source: DataSource) -> tuple[list[dict], str]:
    return load_rows(source, "prompts")


def load_feedback(source: DataSource) -> tuple[list[dict], str]:
    """Unpaired feedback rows {prompt, completion, label} for KTO; both labels must be present."""
    rows, where = load_rows(source, "feedback")
    kinds = {row["label"] for row in rows}
    if len(kinds) < 2:
        missing = "down (false)" if True in kinds else "up (true)"
        raise DataError(f"{where}: every row is labelled {'true' if True in kinds else 'false'}; KTO weighs wanted "
                        f"against unwanted answers, so it needs some rated {missing} too")
    return rows, where


# ------------------------------------------------------------------------------------------------ lengths


def token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation rendered with the chat template, exactly as the TRL trainers tokenise it."""
    return tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )["input_ids"]


def check_lengths(examples: list[dict], tokenizer, max_length: int | None, where: str, answer_fields: tuple,
                  dropped: bool = False) -> dict:
    """Refuse rows whose prompt alone fills max_length (truncation would drop the whole response); count the rows
    that will be cut, or with `dropped` skipped, refusing a dataset with none left. Returns {"rows": n,
    "truncated": k, "longest": tokens, "row_lengths": [tokens of each row's longest sequence]} (None for
    "longest" and "row_lengths" without a max_length, when nothing is measured)."""
    if max_length is None:
        return {"rows": len(examples), "truncated": 0, "longest": None, "row_lengths": None}
    errors, row_lengths = [], []
    for number, ex in enumerate(examples, start=1):
        prompt_ids = token_ids(tokenizer, ex["prompt"], add_generation_prompt=True)
        if len(prompt_ids) >= max_length:
            errors.append(
                f"{where}: row {number}: the prompt is {len(prompt_ids)} tokens but max_length is {max_length}, "
                f"so the response would be cut off entirely"
            )
            continue
        row_lengths.append(max(len(token_ids(tokenizer, ex["prompt"] + ex[field])) for field in answer_fields))
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        raise DataError(f"{len(errors)} of {len(examples)} rows have prompts too long for max_length={max_length}:"
                        f"\n  {shown}")
    truncated = sum(length > max_length for length in row_lengths)
    if dropped and examples and truncated == len(examples):
        raise DataError(f"{where}: all {len(examples)} rows are longer than max_length={max_length} and would be "
                        f"skipped, leaving nothing to train on; raise max_length")
    return {"rows": len(examples), "truncated": truncated, "longest": max(row_lengths, default=0),
            "row_lengths": row_lengths}


def shortest_first(examples: list[dict], row_lengths: list[int] | None) -> list[dict]:
    """The rows ordered by token length, ties in their own order (as they are when no lengths were measured)."""
    if row_lengths is None:
        return examples
    return [examples[i] for i in sorted(range(len(examples)), key=row_lengths.__getitem__)]


def to_dataset(examples: list[dict], directory: Path | None = None):
    """The rows as a datasets.Dataset; with `directory`, stored there and read back, so that the trainer's
    processed copies (tokens, DPO's precomputed reference log-probs) are cached as files beside it, where every
    process of a multi-process run finds them. In memory, each process would cache in its own temp dir."""
    import shutil

    import datasets
    from accelerate import PartialState

    dataset = datasets.Dataset.from_list(examples)
    if directory is None:
        return dataset
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            shutil.rmtree(directory, ignore_errors=True)  # a cache of an interrupted run of this stage
            dataset.save_to_disk(str(directory))
    return datasets.load_from_disk(str(directory))
