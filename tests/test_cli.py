"""The command line and the README as a newcomer meets them: help texts, shipped recipes from anywhere, model names
that resolve the same in every command, a hub that cannot be reached, and a README that is a map whose links work."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import align.cli
from align.models import ModelError

REPO = Path(__file__).resolve().parent.parent


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`align ls | head -1`: the pipe closes before align has written everything; no traceback, no noise."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone: every write to the pipe fails
    try:
        listing = subprocess.run([sys.executable, "-m", "align", "ls"], cwd=tmp_path, stdout=write_end,
                                 stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert listing.returncode == 1
    assert listing.stderr == "", listing.stderr


def test_a_broken_pipe_elsewhere_is_not_swallowed(monkeypatch):
    """Only a closed stdout ends quietly; any other broken pipe is an error the user must see."""
    def breaks(args):
        raise BrokenPipeError("a child process's pipe")
    monkeypatch.setitem(align.cli.COMMANDS, "ls", breaks)
    with pytest.raises(BrokenPipeError, match="child process"):
        align.cli.main(["ls"])


def test_no_help_text_shows_a_doubled_percent_sign():
    parser = align.cli._parser()
    commands = next(action for action in parser._actions if action.choices)
    for name, sub in commands.choices.items():
        assert "%%" not in sub.format_help(), name
    assert "95% interval" in commands.choices["eval"].format_help()


@pytest.mark.slow
def test_align_ls_and_run_by_name_work_outside_a_checkout(tmp_path):
    # a fresh directory and a fresh interpreter: the recipes come from the installed package
    listing = subprocess.run([sys.executable, "-m", "align", "ls"], cwd=tmp_path, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = [line for line in listing.stdout.splitlines() if not line.startswith(" ")]
    # named as `align run` takes them here: there is no recipes/ folder to give a path into
    assert "quickstart" in names and "gpu/gpt2" in names and "gpu/qwen2.5-0.5b-instruct" in names
    assert not any(name.startswith("recipes/") for name in names)
    for name in ("quickstart", "recipes/quickstart.yaml", "gpu/gpt2", "gpu/qwen2.5-0.5b-instruct"):
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


def test_align_ls_in_a_checkout_prints_the_recipe_paths(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert align.cli.main(["ls"]) == 0
    names = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert "recipes/quickstart.yaml" in names and all((REPO / name).is_file() for name in names)


# ------------------------------------------------------------------------------------------------ help


def subcommands(parser: argparse.ArgumentParser, path: str = "align"):
    """Every (command path, parser) under `parser`, itself included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, f"{path} {name}")


def test_every_command_has_a_description_and_every_flag_its_default():
    for path, parser in subcommands(align.cli._parser()):
        assert parser.description and len(parser.description) > 20, f"{path}: no description"
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings:
                shown = parser.formatter_class(path)._expand_help(action)
                assert action.required or "default" in shown, f"{path} {action.option_strings[0]}: no default shown"
        assert "%%" not in text and "(default: None)" not in text, path


def test_align_help_summarises_what_the_tool_does():
    parser = align.cli._parser()
    summary = parser.format_help()
    for part in ("supervised fine-tuning (SFT)", "reward model", "DPO", "KTO", "online DPO rounds", "PPO", "RLOO",
                 "GRPO", "evaluation", "export", "labelling web app", "chat feedback"):
        assert part in " ".join(summary.split()), part
    labels = " ".join(summary.split("labels", 2)[-1].split())
    assert "backup" in labels and "check" in labels and "export" in labels
    commands = dict(subcommands(parser))
    chat = commands["align chat"].format_help()
    assert "/reset" in chat and "(default: 256)" in chat and "(default: 0.0)" in chat
    login = " ".join(commands["align feedback"].format_help().split())
    assert "(default: 10)" in login and "(default: 15.0)" in login and "(default: 1.0)" in login


def test_align_env_names_a_missing_gpu_in_words(capsys):
    import torch

    assert align.cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    if not torch.cuda.is_available():
        assert re.search(r"cuda: no CUDA device$", out, re.M)


# ------------------------------------------------------------------------------------------------ docs examples


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every `align run` / `align validate` of a shipped recipe in the README and docs/, as the arguments of an
    `align validate` that checks the same recipe and overrides (and the accelerate config it is launched with)."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = page.read_text().splitlines()
        continued_until = 0
        for number, line in enumerate(lines, start=1):
            if number <= continued_until:
                continue  # read already, as part of the shell line the one above it began
            end = number
            while line.endswith("\\") and end < len(lines):  # a shell line continued on the next
                line, end = line[:-1] + lines[end], end + 1
            continued_until = end
            for match in re.finditer(r"align (?:run|validate) ([^`\n]*)", line):
                if line[: match.start()].strip() == "#":
                    continue  # the opening comment of a recipe the page shows: the reader's own file
                if "&&" in line[: match.start()]:
                    continue  # it reads what the step before it on the line writes (a data file), not there yet
                try:
                    words = shlex.split(match[1], comments=True)
                except ValueError:
                    words = match[1].split()
                if not words or not re.fullmatch(r"[a-z0-9_./-]+", words[0]) or words[0].startswith(("-", ".")):
                    continue  # RECIPE, ..., or a flag: a placeholder, not an example
                args = [words[0]] + [w for w in words[1:] if "=" in w and not w.startswith("-")]
                for flag in ("--accelerate-config", "--config_file"):
                    given = line.split(flag + " ", 1)[1].split()[0] if flag + " " in line else None
                    if given and "--accelerate-config" not in args:
                        args += ["--accelerate-config", given]
                found.append((f"{page.name}:{number}", args))
    return found


DOCUMENTED = documented_commands()


def test_the_docs_show_override_examples():
    assert len(DOCUMENTED) >= 10
    assert any(len(args) > 1 and "=" in args[1] for _, args in DOCUMENTED)


@pytest.mark.parametrize("where, args", DOCUMENTED, ids=[f"{w} {' '.join(a)}" for w, a in DOCUMENTED])
def test_every_documented_run_and_validate_example_validates(where, args, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code = align.cli.main(["validate", *args])
    assert code == 0, f"{where}: align validate {' '.join(args)}: {capsys.readouterr().err}"
