"""Does a model already tell the kinds of request apart? A linear probe on its hidden states.

    python scripts/probe_request_kinds.py                      # the embedded model on the bundled four-kind task
    python scripts/probe_request_kinds.py --model runs/quickstart/export/model --layers 12 18 24

For every prompt of the training file and of the held-out file, the model reads the prompt as a chat turn (with the
generation prompt, so the last token is where its answer would start); the hidden state there, at each chosen
layer, is the prompt's features. A logistic regression (L2-regularised, features standardised on the training
prompts) learns the rows' `category` from the training prompts and is scored on the held-out ones, whose templates
and entities it never saw. High held-out accuracy means the model's representations already separate, say, a
harmful request from a harmless look-alike in unseen words: a reward model or policy built on it that still
confuses them is short of training signal, not of knowledge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prompt_features(model, tokenizer, prompts: list[str | list[dict]], layers: list[int]) -> torch.Tensor:
    """(prompts, layers, hidden) hidden states at each prompt's last token; a prompt is a text or chat messages."""
    from align.data import token_ids

    out = []
    with torch.no_grad():
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            ids = torch.tensor([token_ids(tokenizer, messages, add_generation_prompt=True)])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            out.append(torch.stack([hidden[layer][0, -1].float() for layer in layers]))
    return torch.stack(out)


def fit_and_score(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                  classes: int, l2: float) -> tuple[float, list[float]]:
    """Held-out accuracy of a multinomial logistic regression, and its recall per class."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weights = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=200)

    def loss():
        optimiser.zero_grad()
        value = torch.nn.functional.cross_entropy(train_x @ weights + bias, train_y) + l2 * (weights ** 2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    with torch.no_grad():
        predicted = (test_x @ weights + bias).argmax(1)
    recall = [((predicted == c) & (test_y == c)).sum().item() / max(1, (test_y == c).sum().item())
              for c in range(classes)]
    return (predicted == test_y).float().mean().item(), recall


def probe(model, tokenizer, train_rows: list[dict], test_rows: list[dict], layers: list[int] | None = None,
          l2: float = 1e-2) -> dict:
    """{"kinds": [...], "layers": {layer: {"accuracy": a, "recall": {kind: r}}}} on the held-out rows."""
    kinds = sorted({str(r.get("category")) for r in train_rows})
    unknown = sorted({str(r.get("category")) for r in test_rows} - set(kinds))
    if unknown:
        raise ValueError(f"held-out rows have categories the training rows lack: {unknown}")
    depth = model.config.num_hidden_layers
    layers = layers if layers is not None else list(range(3, depth + 1, 3))
    bad = [layer for layer in layers if not 0 <= layer <= depth]
    if bad:
        raise ValueError(f"--layers {bad}: the model has hidden states 0 (embeddings) to {depth}")
    features = {name: prompt_features(model, tokenizer, [r["prompt"] for r in rows], layers)
                for name, rows in (("train", train_rows), ("test", test_rows))}
    labels = {name: torch.tensor([kinds.index(str(r.get("category"))) for r in rows])
              for name, rows in (("train", train_rows), ("test", test_rows))}
    out = {"kinds": kinds, "train_prompts": len(train_rows), "test_prompts": len(test_rows), "layers": {}}
    for i, layer in enumerate(layers):
        accuracy, recall = fit_and_score(features["train"][:, i], labels["train"], features["test"][:, i],
                                         labels["test"], len(kinds), l2)
        out["layers"][layer] = {"accuracy": accuracy, "recall": dict(zip(kinds, recall))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="hub id, local model directory, or `embedded`")
    parser.add_argument("--train", default="bundled:prefs_train", help="rows with prompt and category to learn from")
    parser.add_argument("--test", default="bundled:prefs_test", help="held-out rows to score on")
    parser.add_argument("--layers", type=int, nargs="*", help="hidden-state indices (0 = embeddings); every third")
    parser.add_argument("--l2", type=float, default=1e-2, help="L2 penalty of the logistic regression")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.config import DataSource, expand_data_shorthand
    from align.data import load_prompts
    from align.models import resolve_model_path

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    train_rows, _ = load_prompts(DataSource.model_validate(expand_data_shorthand(args.train)))
    test_rows, _ = load_prompts(DataSource.model_validate(expand_data_shorthand(args.test)))
    for rows, where in ((train_rows, args.train), (test_rows, args.test)):
        if any(r.get("category") is None for r in rows):
            raise SystemExit(f"{where}: every row needs a `category` (the kind of request) to probe for")
    result = probe(model, tokenizer, train_rows, test_rows, args.layers, args.l2)
    print(f"linear probe of {args.model}: learns `category` from {result['train_prompts']} prompts of {args.train}, "
          f"scored on {result['test_prompts']} held-out prompts of {args.test}")
    print("layer  accuracy  " + "  ".join(f"{k:>12}" for k in result["kinds"]))
    for layer, figures in result["layers"].items():
        print(f"{layer:>5}  {figures['accuracy']:8.3f}  "
              + "  ".join(f"{figures['recall'][k]:12.3f}" for k in result["kinds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
