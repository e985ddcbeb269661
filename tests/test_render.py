"""How model answers show on the labelling page: Markdown, never hiding text, never running anything."""

from __future__ import annotations

import re

import pytest

from align.ui.render import markdown_html, response_html


def visible_text(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


@pytest.mark.parametrize("answer", ["0.", "1.", "2)", "-", "*", "#", "---", "The options:\n\n1.", "3.\n4."])
def test_an_answer_of_bare_list_markers_shows_its_text(answer):
    page = markdown_html(answer)
    assert visible_text(page) == " ".join(answer.split()), page
    assert "<li" not in page and "<hr" not in page


@pytest.mark.parametrize("answer, tag", [("**bold** text", "<strong>bold</strong>"), ("1. one\n2. two", "<li>one</li>"),
                                         ("# Title", "<h1>Title</h1>"), ("a `x` b", "<code>x</code>")])
def test_ordinary_markdown_still_renders(answer, tag):
    assert tag in markdown_html(answer)


def test_the_plain_text_fallback_escapes_html():
    page = response_html("1.\n<script>alert(1)</script>", "A")
    assert "<script>" not in page and "&lt;script&gt;" in page
