"""Make docs/labelling.png: the labelling page with SFT vs final-policy answers from a finished quickstart run.

    python scripts/screenshot_labelling.py runs/quickstart      # needs /usr/bin/chromium (make test installs it)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from align.ui.label_process import CHROMIUM, CHROMIUM_ARGS, LabelServer, log_in


def main(run: str, out: str = "docs/labelling.png") -> None:
    work = Path(tempfile.mkdtemp())
    from align.runs import load_run_recipe

    final = load_run_recipe(Path(run)).policy_stage()  # the run's final policy: online_dpo in the quickstart
    # A held-out question where the SFT model and the final policy may answer differently (greedy).
    (work / "prompts.jsonl").write_text(json.dumps({"prompt": "How do you write 7 in words?"}) + "\n")
    args = ["--db", str(work / "labels.db"), "--prompts", str(work / "prompts.jsonl"), "--models", f"{run}/sft",
            f"{run}/{final}", "--max-new-tokens", "96", "--temperature", "0"]
    with LabelServer(args, work / "server.log") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = log_in(browser.new_page(viewport={"width": 1200, "height": 760}), server, "alice")
        expect(page.locator("#response-a .response")).to_be_visible(timeout=300_000)
        page.keyboard.press("1" if "seven" in page.locator("#response-a").inner_text() else "2")
        page.locator("#reason textarea").fill("spelled out, as asked")
        page.wait_for_timeout(500)
        page.screenshot(path=out)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
