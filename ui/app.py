"""The labelling web app: pairwise labelling, a blind two-model arena, chat with feedback (rate replies up or
down, correct them), and an admin view, on one label store.

Started by `align label ...` and `align arena ...` (ui/serve.py). Every handler reads the annotator from the
logged-in session (gr.Request.username), never from the page, so nobody can write labels under another name.
The same operations are exposed as API endpoints (/next_pair, /submit_label, /undo_label; /chat_reply,
/rate_reply, /correct_reply when a chat model is served) for gradio_client.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import gradio as gr

from align.chat import ChatModels
from align.labelling.stats import feedback_report, format_feedback, format_report, label_report
from align.labelling.store import (
    DEFAULT_LEASE_SECONDS, MAX_CORRECTION_CHARS, MAX_REASON_CHARS, LabelError, LabelStore,
)
from align.ui.render import conversation_html, response_html

CHOICE_LABELS = [("A is better  [1]", "A"), ("B is better  [2]", "B"), ("Tie  [3]", "tie"), ("Both bad  [4]", "both_bad")]

CSS = """
.response, .conversation { max-height: 28rem; overflow-y: auto; overflow-wrap: anywhere; }
.response, .conversation { padding: 0.5rem 0.75rem; border: 1px solid var(--border-color-primary);
                           border-radius: var(--radius-lg); }
.turn { margin-bottom: 0.5rem; }
.turn .role { font-size: 0.8rem; font-weight: 600; opacity: 0.7; }
.side-label { font-weight: 700; font-size: 1.1rem; }
"""

MAX_MESSAGE_CHARS = 4000  # an arena message; the models' context is short anyway

# 1-4 pick a choice, Enter submits, u undoes; ignored while typing a reason (except Enter) and when the
# labelling tab is not on screen.
KEYBOARD_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const submit = document.querySelector('#submit-label');
  if (!submit || submit.offsetParent === null || event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = ['TEXTAREA', 'INPUT'].includes(event.target.tagName) && event.target.type !== 'radio';
  const values = {'1': 'A', '2': 'B', '3': 'tie', '4': 'both_bad'};
  if (!typing && values[event.key]) {
    const input = document.querySelector(`#choice input[value="${values[event.key]}"]`);
    if (input) { input.click(); event.preventDefault(); }
  } else if (event.key === 'Enter' && !event.shiftKey) {
    submit.click(); event.preventDefault();
  } else if (!typing && event.key === 'u') {
    const undo = document.querySelector('#undo-label');
    if (undo) { undo.click(); event.preventDefault(); }
  }
});
</script>
"""


@dataclass
class LabelSession:
    """What the handlers share: the store, the labelling rules and (optionally) the models that answer."""

    store: LabelStore
    overlap: int = 1
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    models: ChatModels | None = None
    arena_models: tuple[str, str] | None = None
    chat_model: str | None = None  # the model of the chat-feedback tab
    admins: set[str] = field(default_factory=set)
    allow_anonymous: bool = False
    generating: threading.Lock = field(default_factory=threading.Lock)

    def write_responses(self, item_id: str) -> None:
        """Generate and store an item's responses unless that is done already: the background prefetch and an
        annotator's request can reach the same item, and the second one then waits instead of generating again."""
        with self.generating:
            item = self.store.item(item_id)
            if item["response_1"] is None:
                self.store.set_responses(item_id, *self.models.candidates(item))

    def annotator(self, request: gr.Request | None) -> str:
        name = getattr(request, "username", None) if request is not None else None
        if name:
            return name
        if self.allow_anonymous and request is not None and request.session_hash:
            return f"anonymous-{request.session_hash[:12]}"
        raise gr.Error("Log in to label (anonymous labelling is switched off).")

    def current(self, annotator: str) -> dict | None:
        """The pair this annotator should see now, generating its responses first if a model writes them."""
        shown = self.store.next_assignment(annotator, self.overlap, self.lease_seconds,
                                           generated_only=self.models is None)
        if shown is not None and shown["text_a"] is None:
            try:
                self.write_responses(shown["item_id"])
            except Exception as err:  # e.g. a prompt longer than the model's context: move on, say why
                self.store.release(annotator, shown["item_id"])
                raise gr.Error(f"could not generate responses for item {shown['item_id']} ({err}); "
                               "it was skipped: reload for the next pair") from None
            shown = self.store.assignment(annotator, shown["item_id"])
        return shown


# ---------------------------------------------------------------------------------------------- labelling


def progress_text(session: LabelSession, annotator: str) -> str:
    p = session.store.progress(annotator, session.overlap, session.lease_seconds)
    return (f"**{annotator}**: {p['done']} judged, {p['left']} left for you  ·  "
            f"all annotators: {p['all_done']} / {p['all_needed']} judgments ({p['items']} pairs × {session.overlap})")


def pair_view(session: LabelSession, annotator: str, status: str = "") -> tuple:
    """Outputs of the labelling tab: progress, prompt, A, B, item id, choice (cleared), reason (cleared), status."""
    shown = session.current(annotator)
    if shown is None:
        done = "<p><strong>All done</strong>: no pairs are left for you. Thank you!</p>"
        return progress_text(session, annotator), done, "", "", "", None, "", status
    return (progress_text(session, annotator), conversation_html(shown["prompt"]), response_html(shown["text_a"], "A"),
            response_html(shown["text_b"], "B"), shown["item_id"], None, "", status)


def build_label_tab(session: LabelSession):
    """The labelling controls; returns the page-load handler and its outputs (registered by build_app)."""
    progress = gr.Markdown(elem_id="progress")
    prompt = gr.HTML(elem_id="prompt")
    with gr.Row(equal_height=False):
        text_a = gr.HTML(elem_id="response-a")
        text_b = gr.HTML(elem_id="response-b")
    item_id = gr.Textbox(visible=False)
    choice = gr.Radio(CHOICE_LABELS, label="Which response is better?", elem_id="choice")
    reason = gr.Textbox(label="Reason (optional)", lines=1, max_lines=3, max_length=MAX_REASON_CHARS, elem_id="reason")
    with gr.Row():
        submit = gr.Button("Submit  [Enter]", variant="primary", elem_id="submit-label")
        undo = gr.Button("Undo last  [u]", elem_id="undo-label")
    status = gr.Markdown(elem_id="label-status")
    outputs = [progress, prompt, text_a, text_b, item_id, choice, reason, status]

    def show(request: gr.Request):
        return pair_view(session, session.annotator(request))

    def on_submit(item: str, picked: str | None, why: str, request: gr.Request):
        annotator = session.annotator(request)
        if not item:
            return pair_view(session, annotator)
        if picked is None:
            gr.Warning("Pick A, B, tie or both bad first (keys 1-4).")
            return (gr.skip(),) * 7 + ("Pick A, B, tie or both bad first (keys 1-4).",)
        try:
            judgment = session.store.submit(annotator, item, picked, why)
        except LabelError as err:
            return pair_view(session, annotator, f"Not saved: {err}")
        return pair_view(session, annotator, f"Saved judgment #{judgment} ({picked}).")

    def on_undo(request: gr.Request):
        annotator = session.annotator(request)
        try:
            undone = session.store.undo_last(annotator)
        except LabelError as err:
            return pair_view(session, annotator, str(err))
        return pair_view(session, annotator, f"Undid judgment #{undone['judgment_id']} ({undone['choice']}): "
                                             "judge this pair again.")

    submit.click(on_submit, [item_id, choice, reason], outputs, api_visibility="private")
    undo.click(on_undo, None, outputs, api_visibility="private")
    return show, outputs


# ---------------------------------------------------------------------------------------------- API


def add_api(session: LabelSession) -> None:
    def next_pair(request: gr.Request) -> dict:
        """The pair to judge now for the logged-in annotator ({} when none is left), with progress."""
        annotator = session.annotator(request)
        shown = session.current(annotator)
        view = {k: shown[k] for k in ("item_id", "prompt", "text_a", "text_b")} if shown else {}
        return {**view, "progress": session.store.progress(annotator, session.overlap, session.lease_seconds)}

    def submit_label(item_id: str, choice: str, reason: str = "", request: gr.Request = None) -> dict:
        """Record a judgment (choice: A, B, tie or both_bad) of a pair given by next_pair; returns its id."""
        annotator = session.annotator(request)
        try:
            return {"judgment_id": session.store.submit(annotator, item_id, choice, reason)}
        except LabelError as err:
            raise gr.Error(str(err)) from None

    def undo_label(request: gr.Request) -> dict:
        """Undo the logged-in annotator's latest judgment; the pair comes back to them."""
        try:
            return session.store.undo_last(session.annotator(request))
        except LabelError as err:
            raise gr.Error(str(err)) from None

    gr.api(next_pair, api_name="next_pair")
    gr.api(submit_label, api_name="submit_label")
    gr.api(undo_label, api_name="undo_label")


# ---------------------------------------------------------------------------------------------- arena


def build_arena_tab(session: LabelSession) -> None:
    """Both models answer each message, in random left/right order and unnamed until the vote. The preferred
    answer (A on a tie) continues the shared conversation, so every vote has one prompt both models saw;
    'both bad' starts over."""
    gr.Markdown("Chat with two anonymous models at once, then vote. Names are shown after the vote.")
    conversation = gr.HTML(elem_id="arena-conversation")
    with gr.Row(equal_height=False):
        answer_a = gr.HTML(elem_id="arena-a")
        answer_b = gr.HTML(elem_id="arena-b")
    message = gr.Textbox(label="Your message", lines=2, max_length=MAX_MESSAGE_CHARS, elem_id="arena-message")
    send = gr.Button("Send to both", variant="primary", elem_id="arena-send")
    with gr.Row():
        # The labelling tab's choices without their key hints (the arena has no keyboard shortcuts).
        votes = {value: gr.Button(label.split("  [")[0], elem_id=f"arena-vote-{value}") for label, value in CHOICE_LABELS}
    reason = gr.Textbox(label="Reason (optional)", lines=1, max_length=MAX_REASON_CHARS, elem_id="arena-reason")
    status = gr.Markdown(elem_id="arena-status")
    new_chat = gr.Button("New conversation", size="sm")
    history = gr.State([])
    pending = gr.State(None)

    def on_send(text: str, past: list, waiting: dict | None, request: gr.Request):
        session.annotator(request)
        if waiting is not None:
            raise gr.Error("Vote on these answers first.")
        if not text.strip():
            raise gr.Error("Type a message first.")
        if len(text) > MAX_MESSAGE_CHARS:
            raise gr.Error(f"The message is {len(text)} characters; at most {MAX_MESSAGE_CHARS} are sent.")
        prompt = past + [{"role": "user", "content": text.strip()}]
        shown_at = time.time()
        sides = list(session.arena_models)
        random.shuffle(sides)
        seed = random.randrange(2**31)
        texts = [session.models.reply(spec, prompt, seed=seed + i) for i, spec in enumerate(sides)]
        waiting = {"prompt": prompt, "text_a": texts[0], "text_b": texts[1], "model_a": sides[0],
                   "model_b": sides[1], "shown_at": shown_at}
        return (conversation_html(prompt), response_html(texts[0], "A"), response_html(texts[1], "B"), "",
                past, waiting, "Which answer is better?")

    def make_vote(choice: str):
        def on_vote(why: str, past: list, waiting: dict | None, request: gr.Request):
            annotator = session.annotator(request)
            if waiting is None:
                raise gr.Error("Send a message first; then vote on the two answers.")
            try:
                vote_id = session.store.add_arena_vote(annotator, waiting["prompt"], waiting["text_a"],
                                                       waiting["text_b"], waiting["model_a"], waiting["model_b"],
                                                       choice, why, waiting["shown_at"])
            except LabelError as err:
                raise gr.Error(str(err)) from None
            reveal = (f"Saved vote #{vote_id} ({choice}). A was **{waiting['model_a']}**, "
                      f"B was **{waiting['model_b']}**.")
            if choice == "both_bad":
                return "", gr.skip(), gr.skip(), "", [], None, reveal + " Starting over."
            kept = waiting["text_b"] if choice == "B" else waiting["text_a"]
            past = waiting["prompt"] + [{"role": "assistant", "content": kept}]
            return conversation_html(past), gr.skip(), gr.skip(), "", past, None, reveal + " Continue the chat."
        return on_vote

    outputs = [conversation, answer_a, answer_b, reason, history, pending, status]
    send.click(on_send, [message, history, pending], outputs, api_visibility="private").success(
        lambda: "", None, message, api_visibility="private")
    for value, button in votes.items():
        button.click(make_vote(value), [reason, history, pending], outputs, api_visibility="private")
    new_chat.click(lambda: ("", "", "", "", [], None, "New conversation."), None, outputs, api_visibility="private")


# ---------------------------------------------------------------------------------------------- chat feedback


def chat_answer(session: LabelSession, annotator: str, conversation: list[dict]):
    """Stream the chat model's reply to `conversation`, then store it; yields (text so far, reply id or None).
    The reply is committed before the page shows its rating buttons, so a rating always has a row to land on."""
    if not conversation or conversation[-1].get("role") != "user":
        raise LabelError("the conversation must end with your message")
    if any(len(str(m.get("content", ""))) > MAX_MESSAGE_CHARS for m in conversation):
        raise LabelError(f"a message is over {MAX_MESSAGE_CHARS} characters")
    seed = random.randrange(2**31)
    text = ""
    for text in session.models.stream(session.chat_model, conversation, seed=seed):
        yield text, None
    reply_id = uuid.uuid4().hex
    session.store.add_reply(reply_id, annotator, session.chat_model, conversation, text,
                            {**session.models.settings(), "seed": seed})
    yield text, reply_id


def chat_page(messages: list[dict], pending: str | None = None) -> str:
    shown = messages + ([{"role": "assistant", "content": pending}] if pending is not None else [])
    return conversation_html(shown) if shown else "<p><em>Say something to start.</em></p>"


def build_feedback_tab(session: LabelSession) -> None:
    """Chat with one model; rate its latest reply up or down, or edit it into the answer you wanted (the chat
    then goes on from your version). Every reply, rating and correction is saved as it happens."""
    models = session.models
    gr.Markdown(f"Chatting with **{session.chat_model}**: temperature {models.temperature}, top-p {models.top_p}, "
                f"up to {models.max_new_tokens} new tokens, the model's own chat template.",
                elem_id="feedback-settings")
    page = gr.HTML(chat_page([]), elem_id="feedback-conversation")
    message = gr.Textbox(label="Your message", lines=2, max_length=MAX_MESSAGE_CHARS, elem_id="feedback-message")
    send = gr.Button("Send", variant="primary", elem_id="feedback-send")
    with gr.Row():
        up = gr.Button("Good reply", elem_id="feedback-up")
        down = gr.Button("Bad reply", elem_id="feedback-down")
    correction = gr.Textbox(label="The answer you wanted instead of the latest reply (optional)", lines=3,
                            max_length=MAX_CORRECTION_CHARS, elem_id="feedback-correction")
    save = gr.Button("Save correction", elem_id="feedback-correct")
    status = gr.Markdown(elem_id="feedback-status")
    new_chat = gr.Button("New conversation", size="sm", elem_id="feedback-new")
    history = gr.State([])
    last_reply = gr.State(None)

    def on_send(text: str, past: list, request: gr.Request):
        annotator = session.annotator(request)
        if not text.strip():
            raise gr.Error("Type a message first.")
        conversation = past + [{"role": "user", "content": text.strip()}]
        yield chat_page(conversation, ""), "", past, None, "Writing…"
        try:
            for reply, reply_id in chat_answer(session, annotator, conversation):
                if reply_id is None:
                    yield chat_page(conversation, reply), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        except LabelError as err:
            raise gr.Error(str(err)) from None
        past = conversation + [{"role": "assistant", "content": reply}]
        yield chat_page(past), "", past, reply_id, "Rate the reply, correct it, or keep chatting."

    def make_rating(rating: int):
        def on_rate(reply_id: str | None, request: gr.Request):
            annotator = session.annotator(request)
            if reply_id is None:
                raise gr.Error("No reply to rate yet: send a message first.")
            try:
                session.store.rate_reply(reply_id, annotator, rating)
            except LabelError as err:
                raise gr.Error(str(err)) from None
            return f"Saved: {'good' if rating == 1 else 'bad'} reply."
        return on_rate

    def on_correct(text: str, past: list, reply_id: str | None, request: gr.Request):
        annotator = session.annotator(request)
        if reply_id is None:
            raise gr.Error("No reply to correct yet: send a message first.")
        try:
            session.store.correct_reply(reply_id, annotator, text)
        except LabelError as err:
            raise gr.Error(str(err)) from None
        if not text.strip():
            return gr.skip(), gr.skip(), gr.skip(), "Correction removed."
        past = past[:-1] + [{"role": "assistant", "content": text.strip()}]  # the chat goes on from your answer
        return chat_page(past), "", past, "Saved your correction; the chat continues from it."

    send.click(on_send, [message, history], [page, message, history, last_reply, status], api_visibility="private")
    up.click(make_rating(1), [last_reply], status, api_visibility="private")
    down.click(make_rating(-1), [last_reply], status, api_visibility="private")
    save.click(on_correct, [correction, history, last_reply], [page, correction, history, status],
               api_visibility="private")
    new_chat.click(lambda: (chat_page([]), [], None, "New conversation."), None, [page, history, last_reply, status],
                   api_visibility="private")


def add_feedback_api(session: LabelSession) -> None:
    def chat_reply(messages: list[dict], request: gr.Request = None) -> dict:
        """The chat model's reply to a conversation ending with the user's message; stored, with its id."""
        annotator = session.annotator(request)
        try:
            for reply, reply_id in chat_answer(session, annotator, messages):
                pass
        except LabelError as err:
            raise gr.Error(str(err)) from None
        return {"reply_id": reply_id, "reply": reply}

    def rate_reply(reply_id: str, rating: int, request: gr.Request = None) -> dict:
        """Rate one of your replies: 1 (good), -1 (bad)."""
        try:
            session.store.rate_reply(reply_id, session.annotator(request), rating)
        except LabelError as err:
            raise gr.Error(str(err)) from None
        return {"reply_id": reply_id, "rating": rating}

    def correct_reply(reply_id: str, correction: str, request: gr.Request = None) -> dict:
        """The answer you wanted instead of one of your replies."""
        try:
            session.store.correct_reply(reply_id, session.annotator(request), correction)
        except LabelError as err:
            raise gr.Error(str(err)) from None
        return {"reply_id": reply_id}

    gr.api(chat_reply, api_name="chat_reply")
    gr.api(rate_reply, api_name="rate_reply")
    gr.api(correct_reply, api_name="correct_reply")


# ---------------------------------------------------------------------------------------------- admin


def build_admin_tab(session: LabelSession) -> None:
    report = gr.Markdown("Press refresh.", elem_id="admin-report")
    refresh = gr.Button("Refresh statistics", elem_id="admin-refresh")

    def on_refresh(request: gr.Request) -> str:
        if session.annotator(request) not in session.admins:
            return "Only admins see the statistics (mark an account `:admin` in the users file)."
        counts = session.store.counts()
        head = (f"{counts['items']} pairs, {counts['arena_rounds']} arena rounds, {counts['judgments']} judgments "
                f"({counts['undone']} undone, kept in the database), {counts['replies']} chat replies. "
                f"Overlap {session.overlap}.\n\n")
        return (head + format_report(label_report(session.store.judgments())) + "\n"
                + format_feedback(feedback_report(session.store.replies())))

    refresh.click(on_refresh, None, report, api_visibility="private")


# ---------------------------------------------------------------------------------------------- app


def build_app(session: LabelSession, label_tab: bool = True) -> gr.Blocks:
    if (session.arena_models is not None or session.chat_model is not None) and session.models is None:
        raise ValueError("the arena and the chat need models to answer")
    title = ("Which response is better?" if label_tab else "Arena" if session.arena_models is not None
             else "Chat with feedback")
    with gr.Blocks(title="align: preference labelling") as app:
        gr.Markdown(f"## {title}")
        on_load = None
        with gr.Tabs():
            if label_tab:
                with gr.Tab("Label", id="label"):
                    on_load = build_label_tab(session)
            if session.arena_models is not None:
                with gr.Tab("Arena", id="arena"):
                    build_arena_tab(session)
            if session.chat_model is not None:
                with gr.Tab("Chat", id="chat"):
                    build_feedback_tab(session)
            with gr.Tab("Admin", id="admin"):
                build_admin_tab(session)
        if on_load is not None:
            show, outputs = on_load
            app.load(show, None, outputs, api_visibility="private")
        add_api(session)
        if session.chat_model is not None:
            add_feedback_api(session)
    app.queue(default_concurrency_limit=16)
    return app
