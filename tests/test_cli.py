"""The command line and the README as a newcomer meets them: help texts, shipped recipes from anywhere, model names
that resolve the same in every command, a hub that cannot be reached, and a README that is a map whose links work."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import align.cli
from align.models import ModelError

REPO = Path(__file__).resolve().parent.parent


def test_no_help_text_shows_a_doubled_percent_sign():
    parser = align.cli._parser()
    commands = next(action for action in parser._actions if action.choices)
    for name, sub in commands.choices.items():
        assert "%%" not in sub.format_help(), name
    assert "95% interval" in commands.choices["eval"].format_help()


def test_align_ls_and_run_by_name_work_outside_a_checkout(tmp_path):
    # a fresh directory and a fresh interpreter: the recipes come from the installed package
    listing = subprocess.run([sys.executable, "-m", "align", "ls"], cwd=tmp_path, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "recipes/quickstart.yaml" in listing.stdout and "recipes/gpu/gpt2.yaml" in listing.stdout
    for name in ("quickstart", "recipes/quickstart.yaml", "gpu/gpt2"):
        checked = subprocess.run([sys.executable, "-m", "align", "validate", name], cwd=tmp_path,
                                 capture_output=True, text=True)
        assert checked.returncode == 0 and "recipe OK" in checked.stdout, (name, checked.stderr[-2000:])
    missing = subprocess.run([sys.executable, "-m", "align", "validate", "nosuch"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "nosuch" in missing.stderr and "align ls" in missing.stderr


def test_embedded_is_a_model_name_everywhere():
    from align.models import embedded_model_dir, is_hub_id, resolve_model_path

    assert not is_hub_id("embedded")
    assert resolve_model_path("embedded") == str(embedded_model_dir())


def test_an_unreachable_hub_fails_in_seconds_with_a_clear_message(monkeypatch):
    from align.models import hub_reachable, resolve_model_path

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_reachable.cache_clear()
    started = time.monotonic()
    try:
        with pytest.raises(ModelError, match=r"nosuch-org/nosuch-model: looks like a hub id, but the hub .* cannot be "
                                             r"reached .* `embedded`"):
            resolve_model_path("nosuch-org/nosuch-model")
    finally:
        hub_reachable.cache_clear()
    assert time.monotonic() - started < 30  # transformers' own retries took about 45 s


def test_the_quickstart_time_is_stated_once_the_same_everywhere():
    stated = {
        "README.md": "\n".join(line for line in (REPO / "README.md").read_text().splitlines()
                               if "quickstart" in line or "make demo" in line),
        "Makefile": (REPO / "Makefile").read_text().split("\n", 1)[0],
        "recipes/quickstart.yaml": (REPO / "recipes" / "quickstart.yaml").read_text().split("\n\n", 1)[0],
        "align --help": align.cli._parser().epilog,
    }
    minutes = {where: set(re.findall(r"about (\d+) minutes", text)) for where, text in stated.items()}
    assert all(len(found) == 1 for found in minutes.values()), minutes
    assert len(set.union(*minutes.values())) == 1, minutes


def test_the_readme_is_a_map_whose_links_work():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()  # CI runs the README's test command
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.name}: link to {target} points at nothing"
