"""Every figure the README shows comes from a recorded run: the README marks each passage of measured figures with
the record(s) it was read from (docs/results/*.json, written by scripts/record_run.py), and each number in the
passage must be a value of that record at the precision shown. Measured-looking figures (times, memory, rates)
outside a marked passage fail too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- figures: ([^>]+?) -->(.*?)<!-- end figures -->", re.S)
DURATION = re.compile(r"(?:\b(\d+) h )?(\d+) min (\d+) s\b")
ABOUT_MINUTES = re.compile(r"about (\d+) minutes")
FIGURE = re.compile(r"(?<![\w.\-/+−])([+\-−]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(%?)(?![\w\-/]|\.\d)")
# Measured-looking figures: a rate or interval bound (0.xxx), memory, a time in minutes and seconds.
MEASURED = re.compile(r"(?<![\w.])[+\-]?0\.\d{3}\b|\b\d+(?:\.\d+)? GiB\b|\b\d+ min \d+ s\b|\b\d[\d,]* KB\b")


def numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def prose(text: str) -> str:
    """The passage without what is not a figure: inline code, link targets, HTML comments, p-value bounds."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "] ", text)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    return re.sub(r"p < [\d.]+", " ", text)


def unexplained(text: str, records: list[dict]) -> list[str]:
    """The figures of `text` that no value of `records` gives at the precision shown."""
    values = [n for record in records for n in numbers(record)]
    walls = [record["measured"]["wall_seconds"] for record in records if "measured" in record]  # not re-judgings
    missing = []
    text = prose(text)
    for match in DURATION.finditer(text):
        hours, minutes, seconds = (int(group or 0) for group in match.groups())
        seconds += hours * 3600 + minutes * 60
        if not any(round(v) == seconds for v in values):
            missing.append(match.group())
    for match in ABOUT_MINUTES.finditer(text):
        if not any(round(wall / 60) == int(match.group(1)) for wall in walls):
            missing.append(match.group())
    text = ABOUT_MINUTES.sub(" ", DURATION.sub(" ", text))
    for match in FIGURE.finditer(text):
        sign, whole, decimals, percent = match.groups()
        sign = sign.replace("−", "-")
        digits = whole.replace(",", "") + (decimals or "")
        places = len(decimals) - 1 if decimals else 0
        scale = 100 if percent else 1

        def shown(v: float) -> bool:
            v = v * scale
            if sign:
                return f"{v:+.{places}f}" == sign + digits
            return f"{abs(v):.{places}f}" == digits

        if not any(shown(v) for v in values):
            missing.append(match.group())
    return missing


def test_the_checker_finds_figures_the_record_does_not_give():
    record = {"measured": {"wall_seconds": 1000.4, "max_rss_kb": 2833344},
              "stages": {"eval": {"rate": 0.33375, "difference": -0.0312, "share": 0.15}}}
    assert unexplained("took 16 min 40 s, about 17 minutes, 2,833,344 KB; 0.334 and -0.031; 15%", [record]) == []
    assert unexplained("1 h 0 min 0 s", [{"measured": {"wall_seconds": 3600.2}}]) == []
    assert unexplained("1 h 0 min 1 s", [{"measured": {"wall_seconds": 3600.2}}]) == ["1 h 0 min 1 s"]
    assert unexplained("0.335 and +0.031 and 16 min 41 s, about 18 minutes, 16%", [record]) == [
        "16 min 41 s", "about 18 minutes", "0.335", "+0.031", "16%"]
    assert unexplained("`runs/quickstart` [docs](docs/a1.md) p < 0.0001", [record]) == []


def readme_blocks() -> list[tuple[list[str], str]]:
    return [(names.split(), body) for names, body in BLOCK.findall((REPO / "README.md").read_text())]


def test_the_readme_marks_its_measured_figures():
    assert readme_blocks(), "README.md: no <!-- figures: docs/results/... --> passage"


@pytest.mark.parametrize("names,body", readme_blocks(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_readme_figure_is_in_its_record(names, body):
    records = []
    for name in names:
        path = REPO / name
        assert path.is_file(), f"README.md names {name}, which does not exist"
        record = json.loads(path.read_text())
        for key in ("date", "command", "machine", "commit"):
            assert record.get(key), f"{name}: no {key}"
        records.append(record)
    assert unexplained(body, records) == [], f"README.md figures not in {', '.join(names)}"


def test_no_measured_figure_outside_a_marked_passage():
    outside = BLOCK.sub(" ", (REPO / "README.md").read_text())
    assert MEASURED.findall(prose(outside)) == []
