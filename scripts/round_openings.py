"""Which way a finished run's online rounds pushed each opening (a decline, "I don't know"), kind by kind, split by
whether the reward model that chose the pairs had labels on the prompt: a round can teach a decline on prompts
the reward model never saw labelled.

    python scripts/round_openings.py runs/behaviour-s46

Reads RUN/recipe.yaml (the round's prompts and openings, the reward stage's labelled prompts) and each
RUN/online_dpo/round-N/pairs.json (the pairs the round trained on, after balancing). A pair counts under the first
opening that tells its two replies apart, as the round's balancing counts it; "chose" = its chosen reply begins
with the opening, "rejected" = its rejected one does.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import yaml


def prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True)


def direction(pair: dict, openings: list[str]) -> str:
    """'chose OPENING', 'rejected OPENING', or 'neither'."""
    from align.onpolicy import opening_direction

    found = opening_direction(pair, openings)
    if found is None:
        return "neither"
    opening, side = found
    return f"{'chose' if side == 'chosen' else 'rejected'} {opening!r}"


def count_directions(run: Path) -> tuple[dict[str, Counter], list[str]]:
    """Per round: Counter of (kind, labelled?, direction) over its pairs; and the openings."""
    from align.config import parse_recipe
    from align.data import load_prompts

    if not (run / "recipe.yaml").is_file():
        raise SystemExit(f"{run}: not a run directory (no recipe.yaml)")
    recipe = parse_recipe(yaml.safe_load((run / "recipe.yaml").read_text()), str(run / "recipe.yaml"))
    openings = list(recipe.online_dpo.openings or [])
    round_rows = {prompt_key(r["prompt"]): r for r in load_prompts(recipe.online_dpo.dataset)[0]}
    spec = recipe.reward.labelled_samples
    labelled = ({prompt_key(r["prompt"]) for r in load_prompts(spec.prompts)[0][: spec.max_prompts]}
                if spec is not None else set())
    rounds = sorted((run / "online_dpo").glob("round-*/pairs.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not rounds:
        raise SystemExit(f"{run}/online_dpo: no round-N/pairs.json (no finished online round)")
    counts = {}
    for path in rounds:
        tally = Counter()
        for pair in json.loads(path.read_text())["pairs"]:
            key = prompt_key(pair["prompt"])
            kind = round_rows.get(key, {}).get("category", "?")
            tally[(kind, key in labelled, direction(pair, openings))] += 1
        counts[path.parent.name] = tally
    return counts, openings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory with a finished online_dpo stage")
    args = parser.parse_args()
    counts, openings = count_directions(args.run)
    directions = [f"{d} {o!r}" for o in openings for d in ("chose", "rejected")] + ["neither"]
    for name, tally in counts.items():
        print(f"{args.run}/online_dpo/{name}: {sum(tally.values())} pairs")
        print(" | ".join(["kind", "reward model had labels", *directions]))
        for kind, labelled in sorted({(k, lab) for k, lab, _ in tally}, key=lambda x: (x[0], not x[1])):
            print(" | ".join([kind, "yes" if labelled else "no", *(str(tally[(kind, labelled, d)])
                                                                   for d in directions)]))


if __name__ == "__main__":
    main()
