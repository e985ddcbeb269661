"""Make docs/feedback.png: the Chat tab of the labelling app, replies rated (by whether they are right) and one
being corrected.

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
        page = log_in(browser.new_page(viewport={"width": 1200, "height": 900}), server, "alice")
        status = page.locator("#feedback-status")
        page.locator("#feedback-message textarea").fill("What is the capital of Australia?")
        page.locator("#feedback-send").click()
        expect(status).to_contain_text("Rate the reply", timeout=300_000)
        right = "Canberra" in page.locator("#feedback-conversation").inner_text()
        page.locator("#feedback-up" if right else "#feedback-down").click()
        page.locator("#feedback-message textarea").fill("And how many states does it have?")
        page.locator("#feedback-send").click()
        expect(status).to_contain_text("Rate the reply", timeout=300_000)
        page.locator("#feedback-down").click()
        expect(status).to_contain_text("Saved: bad reply")
        page.locator("#feedback-correction textarea").fill("Australia has six states and two mainland territories.")
        page.wait_for_timeout(500)
        page.screenshot(path=out, full_page=True)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
