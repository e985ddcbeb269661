"""A real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) logs in, labels with the mouse and
the keyboard, undoes, checks that model output cannot run script, looks at the admin view (admins only) and votes in
the arena; in the chat it rates and edits earlier replies and edits a message of its own.
`make test` installs Chromium; without it this test fails in CI and is skipped elsewhere."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from align.labelling.store import LabelStore  # noqa: E402
from align.ui import label_process  # noqa: E402
from align.ui.label_process import CHROMIUM, CHROMIUM_ARGS, LabelServer  # noqa: E402


XSS_PAIR = {"id": "xss", "prompt": "Write <b>bold</b> HTML for me",
            "response_a": "<script>window.__xss = 1</script>Here: <img src=x onerror=\"window.__xss = 2\"> ${window.__xss = 3}",
            "response_b": "**Markdown** works:\n\n- one\n- two\n\n[click](javascript:window.__xss=4)"}
MULTI_TURN_PAIR = {"id": "multi", "prompt": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"},
                                             {"role": "user", "content": "What is 2+2?"}],
                   "response_a": "4", "response_b": "Five."}
LONG_PAIR = {"id": "long", "prompt": "Count to 300.", "response_a": " ".join(str(i) for i in range(1, 301)) * 4,
             "response_b": "1, 2, 3."}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: `make test` installs it (apt-get install chromium)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium chromium-driver)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(browser, server: LabelServer, name: str):
    return label_process.log_in(browser.new_context(viewport={"width": 1280, "height": 1000}).new_page(), server, name)


@pytest.mark.slow
@pytest.mark.fault("attack")
def test_label_with_mouse_and_keyboard_in_chromium(browser, tiny_llama, tiny_gpt2, tmp_path):
    expect = sync_api.expect
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in (XSS_PAIR, MULTI_TURN_PAIR, LONG_PAIR)))
    db = tmp_path / "labels.db"
    args = ["--pairs", str(pairs), "--db", str(db), "--prompts", "bundled:prefs_test", "--models", str(tiny_llama),
            str(tiny_gpt2), "--max-new-tokens", "12"]
    with LabelServer(args, tmp_path / "server.log") as server:
        page = log_in(browser, server, "alice")
        status = page.locator("#label-status")

        # 1. Untrusted model output is shown as text: no script ran, no element was made from it.
        expect(page.locator("#prompt")).to_contain_text("Write <b>bold</b> HTML for me")
        a_side_is_script = "window.__xss = 1" in page.locator("#response-a").inner_text()  # sides are random
        script_side, markdown_side = ("#response-a", "#response-b") if a_side_is_script else ("#response-b", "#response-a")
        expect(page.locator(script_side)).to_contain_text("<script>window.__xss = 1</script>Here: <img src=x")
        assert page.evaluate("window.__xss") is None
        assert page.locator("#response-a img, #response-b img, #response-a script, #response-b script").count() == 0
        assert page.locator("#response-a a, #response-b a").count() == 0  # the javascript: link stays text
        expect(page.locator(f"{markdown_side} strong")).to_have_text("Markdown")  # markdown still renders

        # 2. Enter with nothing chosen saves nothing; then the mouse: pick B, press Submit.
        page.locator("#progress").click()
        page.keyboard.press("Enter")
        expect(status).to_contain_text("Pick A, B, tie or both bad first")
        page.get_by_text("B is better").click()
        page.locator("#submit-label").click()
        expect(status).to_contain_text("Saved judgment #1 (B)")

        # 3. A multi-turn prompt; the keyboard: 1 then Enter.
        expect(page.locator("#prompt")).to_contain_text("Be brief.")
        expect(page.locator("#prompt")).to_contain_text("Hello!")
        page.keyboard.press("1")
        expect(page.locator("#choice input[value='A']")).to_be_checked()
        page.keyboard.press("Enter")
        expect(status).to_contain_text("Saved judgment #2 (A)")

        # 4. A long response scrolls inside its box; 3, a typed reason, Enter.
        expect(page.locator("#prompt")).to_contain_text("Count to 300.")
        long_box = page.locator("#response-a .response, #response-b .response").first
        assert long_box.evaluate("e => getComputedStyle(e).overflowY") == "auto"
        page.keyboard.press("3")
        page.locator("#reason textarea").fill("same quality")
        page.locator("#reason textarea").press("Enter")
        expect(status).to_contain_text("Saved judgment #3 (tie)")

        # 5. Undo with u brings the pair back; 4 and Enter judge it again.
        page.locator("#progress").click()  # out of the text box, so u is a shortcut
        page.keyboard.press("u")
        expect(status).to_contain_text("Undid judgment #3 (tie)")
        expect(page.locator("#prompt")).to_contain_text("Count to 300.")
        page.keyboard.press("4")
        page.keyboard.press("Enter")
        expect(status).to_contain_text("Saved judgment #4 (both_bad)")
        expect(page.locator("#progress")).to_contain_text("alice: 3 judged")
        # The next pair is written by the two models on the fly.
        expect(page.locator("#response-a .response")).not_to_contain_text("generating", timeout=60_000)
        page.screenshot(path=str(tmp_path / "labelling.png"))  # for a person looking into a failure

        # 6. Statistics are for admins only: an annotator never sees the tab.
        expect(page.get_by_role("tab", name="Arena")).to_be_visible()
        assert page.get_by_role("tab", name="Admin").count() == 0
        admin = log_in(browser, server, "admin")
        admin.get_by_role("tab", name="Admin").click()
        admin.locator("#admin-refresh").click()
        expect(admin.locator("#admin-report")).to_contain_text("3 judgments (1 undone")
        expect(admin.locator("#admin-report")).to_contain_text("alice")

        # 7. The arena: both models answer, blind; the vote names them and lands in the same store.
        page.get_by_role("tab", name="Arena").click()
        page.locator("#arena-message textarea").fill("Name a colour.")
        page.locator("#arena-send").click()
        expect(page.locator("#arena-status")).to_contain_text("Which answer is better?", timeout=60_000)
        page.locator("#arena-vote-B").click()
        expect(page.locator("#arena-status")).to_contain_text("Saved vote")
        expect(page.locator("#arena-status")).to_contain_text(str(tiny_llama))

    judgments = LabelStore(db).judgments(include_undone=True)
    assert [(j["item_id"], j["choice"], j["annotator"]) for j in judgments[:4]] == [
        ("xss", "B", "alice"), ("multi", "A", "alice"), ("long", "tie", "alice"), ("long", "both_bad", "alice")]
    assert judgments[2]["reason"] == "same quality" and judgments[2]["undone_at"] is not None
    assert judgments[0]["text_a"].startswith("<script>") == a_side_is_script  # the row holds what was on screen
    arena = judgments[4]
    assert arena["kind"] == "arena" and arena["choice"] == "B" and arena["prompt"][-1]["content"] == "Name a colour."
    assert {arena["model_a"], arena["model_b"]} == {str(tiny_llama), str(tiny_gpt2)}


def test_arena_command_serves_only_the_arena(browser, tiny_llama, tiny_gpt2, tmp_path):
    expect = sync_api.expect
    db = tmp_path / "labels.db"
    args = [str(tiny_llama), str(tiny_gpt2), "--db", str(db), "--max-new-tokens", "8", "--temperature", "0"]
    with LabelServer(args, tmp_path / "server.log", command="arena") as server:
        page = log_in(browser, server, "bob")
        expect(page.get_by_role("tab", name="Arena")).to_be_visible()
        assert page.get_by_role("tab", name="Label").count() == 0 and page.get_by_role("tab", name="Admin").count() == 0
        page.locator("#arena-vote-A").click()  # nothing to vote on yet: refused, nothing stored
        page.locator("#arena-message textarea").fill("Hi")
        page.locator("#arena-send").click()
        expect(page.locator("#arena-status")).to_contain_text("Which answer is better?", timeout=60_000)
        page.locator("#arena-vote-tie").click()
        expect(page.locator("#arena-status")).to_contain_text("Continue the chat")
        expect(page.locator("#arena-conversation")).to_contain_text("Hi")
        page.locator("#arena-message textarea").fill("And again?")
        page.locator("#arena-send").click()
        expect(page.locator("#arena-status")).to_contain_text("Which answer is better?", timeout=60_000)
        page.locator("#arena-vote-both_bad").click()
        expect(page.locator("#arena-status")).to_contain_text("Starting over")
    first, second = LabelStore(db).judgments()
    assert (first["choice"], second["choice"], first["annotator"]) == ("tie", "both_bad", "bob")
    # The second round's prompt continues from the first round's kept answer (A on a tie).
    assert second["prompt"] == first["prompt"] + [{"role": "assistant", "content": first["text_a"]},
                                                {"role": "user", "content": "And again?"}]


def reply_buttons(page, n: int):
    """The buttons under the chat's n-th reply (0: the first): copy, edit, and the thumbs (named Like/Dislike, or
    Liked/Disliked when chosen)."""
    return page.locator("#feedback-chat .message-buttons-left").nth(n)


def edit_message(page, buttons, text: str) -> None:
    buttons.get_by_role("button", name="Edit").click()
    page.locator("#feedback-chat textarea.edit-textarea").fill(text)
    page.locator("#feedback-chat").get_by_role("button", name="Submit").click()


@pytest.mark.slow
def test_chat_feedback_in_chromium_trains_sft_and_kto(browser, tiny_llama, tmp_path):
    """Log in, chat three turns; rate earlier replies with the thumbs (and change one), correct an earlier reply and
    chat on from it, edit a message of your own to get a new reply; every step is in the database. Then a tiny
    recipe trains sft on the correction and kto on the ratings."""
    from align.config import parse_recipe
    from align.pipeline import run_recipe
    from align.ui.render import WORD_JOINER
    from tests.conftest import tiny_recipe

    expect = sync_api.expect
    db = tmp_path / "labels.db"
    args = [str(tiny_llama), "--db", str(db), "--max-new-tokens", "12", "--temperature", "1.0"]
    requests: list[str] = []
    with LabelServer(args, tmp_path / "server.log", command="feedback") as server:
        page = log_in(browser, server, "alice")
        page.on("request", lambda r: requests.append(r.url))
        status = page.locator("#feedback-status")
        expect(page.get_by_role("tab", name="Chat")).to_be_visible()
        assert page.get_by_role("tab", name="Label").count() == 0 and page.get_by_role("tab", name="Admin").count() == 0
        expect(page.locator("#feedback-settings")).to_contain_text("temperature 1.0")

        # 1. Three turns; untrusted text shows as text: no element made from it, no address it names fetched.
        xss = "What is the capital of <b>France</b>? <img src=x onerror=\"window.__xss = 1\"> ![](http://127.0.0.1:9/x.png)"
        for n, text in enumerate([xss, "And of Spain?", "And of Italy?"], start=1):
            page.locator("#feedback-message textarea").fill(text)
            page.locator("#feedback-send").click()
            expect(status).to_contain_text(f"Reply {n} saved", timeout=60_000)
        shown = page.locator("#feedback-chat .message-content").first.inner_text().replace(WORD_JOINER, "")
        assert "What is the capital of <b>France</b>? <img src=x" in shown
        assert page.locator("#feedback-chat .message-content b, #feedback-chat .message-content img").count() == 0
        assert page.evaluate("window.__xss") is None and not [u for u in requests if "127.0.0.1:9" in u]

        # 2. Thumbs on earlier replies, not only the latest; the other thumb changes a rating.
        reply_buttons(page, 0).get_by_role("button", name="Like", exact=True).click()
        expect(status).to_contain_text("Saved: reply 1 rated good")
        reply_buttons(page, 0).get_by_role("button", name="Dislike", exact=True).click()
        expect(status).to_contain_text("Saved: reply 1 rated bad")
        reply_buttons(page, 1).get_by_role("button", name="Dislike", exact=True).click()
        expect(status).to_contain_text("Saved: reply 2 rated bad")
        reply_buttons(page, 2).get_by_role("button", name="Like", exact=True).click()
        expect(status).to_contain_text("Saved: reply 3 rated good")

        # 3. Reply 2 edited into the answer wanted: a correction; the chat goes on from it.
        edit_message(page, reply_buttons(page, 1), "The capital of Spain is Madrid.")
        expect(status).to_contain_text("Saved your correction of reply 2; the chat continues from it. The 2 messages")
        expect(page.locator("#feedback-chat .message-content")).to_have_count(4)
        page.locator("#feedback-message textarea").fill("And of Portugal?")
        page.locator("#feedback-send").click()
        expect(status).to_contain_text("Reply 3 saved", timeout=60_000)

        # 4. A message of one's own edited: the model answers it again; the thumbs shown are the stored ones.
        edit_message(page, page.locator("#feedback-chat .message-buttons-right").nth(2), "And of <i>Greece</i>?")
        expect(status).to_contain_text("Answered your edited message: reply 3 saved", timeout=60_000)
        expect(reply_buttons(page, 0).get_by_role("button", name="Disliked", exact=True)).to_be_visible()
        expect(reply_buttons(page, 2).get_by_role("button", name="Like", exact=True)).to_be_visible()

        # 5. The statistics are an admin's: alice has no Admin tab, the admin has.
        admin = log_in(browser, server, "admin")
        admin.get_by_role("tab", name="Admin").click()
        admin.locator("#admin-refresh").click()
        expect(admin.locator("#admin-report")).to_contain_text("5 chat replies")

    store = LabelStore(db)
    france, spain, italy, portugal, greece = store.replies()
    assert {(r["annotator"], r["model"], r["model_resolved"]) for r in (france, greece)} == {
        ("alice", str(tiny_llama), str(tiny_llama.resolve()))}
    assert france["conversation"] == [{"role": "user", "content": xss}]  # exactly as typed
    assert [(r["rating"], r["correction"]) for r in (france, spain, italy, portugal, greece)] == [
        (-1, None), (-1, "The capital of Spain is Madrid."), (1, None), (None, None), (None, None)]
    assert [h["rating"] for h in store.feedback_history(france["reply_id"])] == [1, -1]
    corrected = spain["conversation"] + [{"role": "assistant", "content": "The capital of Spain is Madrid."}]
    assert portugal["conversation"] == corrected + [{"role": "user", "content": "And of Portugal?"}]
    assert greece["conversation"] == corrected + [{"role": "user", "content": "And of <i>Greece</i>?"}]
    assert greece["settings"]["temperature"] == 1.0 and greece["settings"]["max_new_tokens"] == 12

    # max_length 256: the prompts are three turns of 12 random tokens each, after the long first message
    few = {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 2, "max_length": 256}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "kto"],
                                      sft={"dataset": f"labels:{db}", **few}, kto={"dataset": f"labels:{db}", **few}))
    records = run_recipe(recipe)
    assert records["sft"]["metrics"]["train_loss"] > 0
    # wanted: Italy's reply and the correction; unwanted: France's and Spain's replies
    assert (records["kto"]["metrics"]["desirable_rows"], records["kto"]["metrics"]["undesirable_rows"]) == (2, 2)

    # Served from this run, replies would be stored with the run's name and its final adapter on the base.
    from align.chat import resolved_chat_model

    run = tmp_path / "runs" / "tiny"
    on_base = f" on {tiny_llama.resolve()}"
    assert resolved_chat_model(str(run)) == f"{(run / 'kto' / 'adapter').resolve()}{on_base}"
    sft = resolved_chat_model(str(run / "sft"))
    assert sft == f"{(run / 'sft' / 'adapter').resolve()}{on_base}"
