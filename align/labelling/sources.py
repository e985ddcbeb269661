"""Items to label: pairs from a file (prompt + two responses), or prompts whose two responses a model generates
when an annotator first needs them."""

from __future__ import annotations

from align.config import DataSource, expand_data_shorthand
from align.data import DataError, answer_messages, load_prompts, preference, prompt_messages, prompt_row, read_rows

RESPONSE_FIELDS = (("response_a", "response_b"), ("response_1", "response_2"), ("chosen", "rejected"))


def pair_items(source: str) -> list[dict]:
    """Items from a file (or bundled set) of prompts with two responses each. A row has a prompt (text or chat
    messages, or `messages`) and two responses under response_a/response_b, response_1/response_2, or
    chosen/rejected (relabelling an existing preference set: the app hides which was which). Optional: id,
    model_a/model_b. Other fields ride along in `extra`."""
    rows, where = read_rows(DataSource.model_validate(expand_data_shorthand(source)))
    items, errors = [], []
    for index, row in enumerate(rows, start=1):
        at = f"{where}: row {row.pop('__row_number__', index) if isinstance(row, dict) else index}"
        try:
            if not isinstance(row, dict):
                raise DataError(f"{at}: expected an object with a prompt and two responses")
            fields = next((f for f in RESPONSE_FIELDS if f[0] in row or f[1] in row), None)
            if fields is None:
                raise DataError(f"{at}: missing responses: give response_a and response_b (has {sorted(row)})")
            if fields == ("chosen", "rejected"):
                pair = preference(dict(row), at)
                prompt, responses = pair["prompt"], [pair["chosen"][0]["content"], pair["rejected"][0]["content"]]
            else:
                prompt = prompt_messages(row, at) if row.get("prompt") is not None else prompt_row(row, at)["prompt"]
                responses = [answer_messages(row, field, at)[0]["content"] for field in fields]
            item = {"prompt": prompt, "response_1": responses[0], "response_2": responses[1], "where": at,
                    "model_1": row.get("model_a", row.get("model_1")), "model_2": row.get("model_b", row.get("model_2"))}
            if row.get("id") is not None:
                item["id"] = str(row["id"])
            item["extra"] = {k: v for k, v in row.items() if k not in (*fields, "prompt", "messages", "id", "model_a",
                                                                      "model_b", "model_1", "model_2")}
            items.append(item)
        except DataError as err:
            errors.append(str(err))
    if errors:
        raise DataError(f"{len(errors)} of {len(rows)} rows are not prompt + two responses:\n  " + "\n  ".join(errors[:5]))
    return items


def prompt_items(source: str, models: list[str]) -> list[dict]:
    """Items whose two responses the given model(s) will generate when first needed: one model samples twice,
    two models answer once each."""
    rows, where = load_prompts(DataSource.model_validate(expand_data_shorthand(source)))
    model_1, model_2 = (models[0], models[0]) if len(models) == 1 else models
    items = []
    for row in rows:
        prompt = row.pop("prompt")
        item = {"prompt": prompt, "model_1": model_1, "model_2": model_2, "extra": row}
        if row.get("id") is not None:
            item["id"] = f"{row['id']}"
        items.append(item)
    return items
