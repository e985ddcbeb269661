"""Record a finished run in docs/results/: the machine, date, commit and command it came from, its resolved recipe
and library versions, every stage's time, memory and metrics, and what /usr/bin/time measured of the whole command.
The README's figures are read off such a record (tests/test_readme_figures.py checks each one against it).

    /usr/bin/time -v -o /tmp/demo.time make demo
    python scripts/record_run.py runs/quickstart --command "make demo" --time-log /tmp/demo.time \
        --out docs/results/quickstart-2026-12-05.json      # and its held-out answers, *.answers.jsonl

    python scripts/record_run.py --tests --command "make test" --time-log /tmp/test.time --pytest-log /tmp/test.log \
        --out docs/results/test-suite-2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """What the figures depend on: CPU model and its vector extensions, cores, memory, GPU."""
    info = {"system": platform.platform(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.+)", cpuinfo).group(1).strip()
        info["memory_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
                                   / 2**20, 1)
    except (OSError, AttributeError):
        info["cpu"] = platform.processor()
    import torch

    from align.models import cpu_capability

    info["cpu_capability"] = cpu_capability()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no"))}


def provenance(command: str) -> dict:
    """What every record starts with, and the README's figures check asks of it: date, command, machine, commit."""
    return {"date": time.strftime("%Y-%m-%d"), "command": command, "machine": machine(), **commit()}


def write_record(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def time_log(path: Path) -> dict:
    """/usr/bin/time -v's wall time (seconds) and peak resident memory (KB, and GiB)."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        raise SystemExit(f"{path}: not the output of /usr/bin/time -v")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    status = re.search(r"Exit status: (\d+)", text)
    return {"wall_seconds": round(seconds, 1), "max_rss_kb": int(rss.group(1)),
            "max_rss_gib": round(int(rss.group(1)) / 2**20, 2), "exit_status": int(status.group(1)) if status else None}


def run_record(run: Path) -> dict:
    """The run directory as it describes itself: resolved recipe, versions, each finished stage's stage.json."""
    from align.runs import STAGE_FILE

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    stages = {}
    for stage in recipe["stages"]:
        path = run / stage / STAGE_FILE
        if path.is_file():
            stages[stage] = json.loads(path.read_text())
    return {"run": str(run), "recipe": recipe, "versions": json.loads((run / "versions.json").read_text()),
            "stages": stages, "data": bundled_counts(recipe)}


def bundled_counts(recipe: dict) -> dict:
    """Rows per kind of request in each bundled file the recipe names (the README's dataset sizes)."""
    from collections import Counter

    names = set(re.findall(r'"bundled": "(\w+)"', json.dumps(recipe)))  # a resolved recipe's data sources
    counts = {}
    for name in sorted(names):
        path = REPO / "align" / "bundled" / f"{name}.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            counts[name] = {"rows": len(rows), **Counter(row.get("category", "answerable") for row in rows)}
    return counts


def test_record(pytest_log: Path) -> dict:
    """pytest's closing line: how many passed, failed, skipped, and in how long."""
    tail = pytest_log.read_text().strip().splitlines()[-1]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    seconds = re.search(r"in ([\d.]+)s", tail)
    return {"pytest": tail.strip("= "), **counts, "pytest_seconds": float(seconds.group(1)) if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="the finished run directory, e.g. runs/quickstart")
    parser.add_argument("--tests", action="store_true", help="record a test-suite run instead of a recipe run")
    parser.add_argument("--command", required=True, help="the command that was timed, as a user would type it")
    parser.add_argument("--time-log", type=Path, required=True, help="what `/usr/bin/time -v -o FILE` wrote")
    parser.add_argument("--pytest-log", type=Path, help="pytest's output (with --tests)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the record (docs/results/*.json)")
    args = parser.parse_args()
    if args.tests == (args.run is not None):
        parser.error("give a run directory, or --tests with --pytest-log")
    record = {**provenance(args.command), "measured": time_log(args.time_log)}
    record.update(test_record(args.pytest_log) if args.tests else run_record(args.run))
    write_record(record, args.out)
    if args.run is not None and (written := write_answers(args.run, args.out)):
        print(f"wrote {written}", file=sys.stderr)


def write_answers(run: Path, record: Path) -> Path | None:
    """The eval stage's held-out answers beside the record (prompt and each model's answer, no scores), so that
    `python scripts/rejudge.py RECORD` can judge them again when a judge changes, long after runs/ is gone."""
    from rejudge import ANSWER_SUFFIX, MODELS, answers_path

    samples = run / "eval" / "samples.jsonl"
    if not samples.is_file():
        return None
    keep = ["prompt"] + [name + ANSWER_SUFFIX for name in MODELS]
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    out = answers_path(record)
    out.write_text("".join(json.dumps({k: row[k] for k in keep if k in row}, ensure_ascii=False) + "\n"
                           for row in rows))
    return out


if __name__ == "__main__":
    main()
