"""Model output as HTML that cannot run anything: Markdown rendered with raw HTML turned off.

Responses are untrusted text. markdown-it with html=False prints any tag in them as visible text and refuses
javascript:/vbscript:/data: links, so `<script>` or `<img onerror=...>` in an answer shows up as what it is.
Markdown images are shown as their text for the same reason (no requests to addresses a model wrote).
The chat tab's gr.Chatbot renders Markdown itself; chat_text gives it text that keeps these promises.
"""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

# Images are off too: a response's ![](http://...) would make every annotator's browser fetch that address.
_markdown = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"]).disable("image")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


# Markup that shows nothing: "0." or "1." alone is an empty numbered list, "-" an empty bullet, "#" an empty heading.
_EMPTY_BLOCK = re.compile(r"<(li|h[1-6])[^>]*>\s*</\1>|<hr\s*/?>")


def markdown_html(text: str | None) -> str:
    """Markdown, unless it would hide some of the text (an answer of just "1." must show "1.", not an empty list):
    then the text as it is, escaped, with its line breaks."""
    rendered = _markdown.render(text or "")
    if _EMPTY_BLOCK.search(rendered) or (text or "").strip() and not re.sub(r"<[^>]+>", "", rendered).strip():
        return "<p>" + html.escape(text or "").replace("\n", "<br>\n") + "</p>\n"
    return rendered


def conversation_html(messages: list[dict]) -> str:
    """A prompt (one or more turns) as labelled blocks."""
    turns = []
    for message in messages:
        role = message.get("role", "user")
        turns.append(f'<div class="turn turn-{html.escape(role)}"><div class="role">{ROLE_NAMES.get(role, "?")}</div>'
                     f'{markdown_html(message.get("content", ""))}</div>')
    return '<div class="conversation">' + "".join(turns) + "</div>"


# gr.Chatbot renders a message as Markdown with HTML allowed: it strips scripts, but `<b>` turns bold and an
# `<img src=...>` or `![](...)` makes the browser fetch that address. An invisible word joiner after every "<" and
# inside every "![" shows those as the text they are, in code blocks too (an escape like &lt; would show there).
WORD_JOINER = "\u2060"


def chat_text(text: str) -> dict:
    """A message as gr.Chatbot content. As a text part rather than a plain string, which Gradio would dedent."""
    return {"type": "text", "text": text.replace("<", "<" + WORD_JOINER).replace("![", "!" + WORD_JOINER + "[")}


def typed_text(shown: str) -> str:
    """The text of a message edited in gr.Chatbot, without what chat_text added to show it."""
    return shown.replace("<" + WORD_JOINER, "<").replace("!" + WORD_JOINER + "[", "![")


def response_html(text: str | None, side: str) -> str:
    body = markdown_html(text) if text is not None else "<p><em>generating…</em></p>"
    return f'<div class="side-label">{side}</div><div class="response" data-side="{side}">{body}</div>'
