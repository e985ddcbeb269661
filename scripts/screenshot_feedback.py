"""Make docs/feedback.png: the Chat tab of the labelling app, replies rated with the thumbs (by whether they are
right), the second edited into the right answer.

    python scripts/screenshot_feedback.py embedded      # or a run dir; needs /usr/bin/chromium (make test installs it)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from align.ui.label_process import CHROMIUM, CHROMIUM_ARGS, LabelServer, log_in


def main(model: str = "embedded", out: str = "docs/feedback.png") -> None:
    work = Path(tempfile.mkdtemp())
    args = [model, "--db", str(work / "labels.db"), "--max-new-tokens", "48", "--temperature", "0.7"]
    with LabelServer(args, work / "server.log", command="feedback") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = log_in(browser.new_page(viewport={"width": 1000, "height": 820}), server, "alice")
        status = page.locator("#feedback-status")
        replies = page.locator("#feedback-chat .message-buttons-left")  # the buttons under each reply
        for n, question in enumerate(["What is the capital of Australia?", "And how many states does it have?"], 1):
            page.locator("#feedback-message textarea").fill(question)
            page.locator("#feedback-send").click()
            expect(status).to_contain_text(f"Reply {n} saved", timeout=300_000)
        right = "Canberra" in page.locator("#feedback-chat [data-testid='bot']").first.inner_text()
        replies.nth(0).get_by_role("button", name="Like" if right else "Dislike", exact=True).click()
        expect(status).to_contain_text("Saved: reply 1")
        replies.nth(1).get_by_role("button", name="Dislike", exact=True).click()
        expect(status).to_contain_text("Saved: reply 2 rated bad")
        replies.nth(1).get_by_role("button", name="Edit").click()
        page.locator("#feedback-chat textarea.edit-textarea").fill("Australia has six states and two mainland "
                                                                  "territories.")
        page.locator("#feedback-chat").get_by_role("button", name="Submit").click()
        expect(status).to_contain_text("Saved your correction of reply 2")
        page.wait_for_timeout(500)
        page.screenshot(path=out, full_page=True)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
