"""The labelling web app: pairwise labelling, a blind two-model arena, chat with feedback (a thumb up or down on
any reply, edit it into the answer wanted), and an admin view (admins only), on one label store.

Started by `align label ...`, `align arena ...` and `align feedback ...` (ui/serve.py). Every handler reads the
annotator from the logged-in session (gr.Request.username), never from the page, so nobody can write labels under
another name.
The same operations are exposed as API endpoints (/next_pair, /submit_label, /undo_label; /chat_reply,
/rate_reply, /correct_reply when a chat model is served) for gradio_client.
"""

from __future__ import annotations

import functools
import inspect
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import gradio as gr

from align.chat import ChatModels
from align.labelling.stats import feedback_report, format_feedback, format_report, label_report
from align.labelling.store import (
    DEFAULT_LEASE_SECONDS, MAX_REASON_CHARS, LabelError, LabelStore,
)
from align.ui.render import chat_text, conversation_html, response_html, typed_text

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
    chat_model: str | None = None  # the model of the chat-feedback tab, as named when serving
    chat_model_resolved: str | None = None  # what that name loaded (stored beside it with each reply)
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

    def is_admin(self, request: gr.Request | None) -> bool:
        return getattr(request, "username", None) in self.admins

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


def label_errors(handler):
    """A handler whose LabelError (a request the store refused) reaches the page, or a gradio_client caller, as a
    gr.Error with the store's message; Gradio would otherwise hide it behind a generic error."""
    if inspect.isgeneratorfunction(handler):  # Gradio streams only what is a generator function itself

        @functools.wraps(handler)
        def stream(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except LabelError as err:
                raise gr.Error(str(err)) from None

        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except LabelError as err:
            raise gr.Error(str(err)) from None

    return call


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

    @label_errors
    def submit_label(item_id: str, choice: str, reason: str = "", request: gr.Request = None) -> dict:
        """Record a judgment (choice: A, B, tie or both_bad) of a pair given by next_pair; returns its id."""
        return {"judgment_id": session.store.submit(session.annotator(request), item_id, choice, reason)}

    @label_errors
    def undo_label(request: gr.Request) -> dict:
        """Undo the logged-in annotator's latest judgment; the pair comes back to them."""
        return session.store.undo_last(session.annotator(request))

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
        @label_errors
        def on_vote(why: str, past: list, waiting: dict | None, request: gr.Request):
            annotator = session.annotator(request)
            if waiting is None:
                raise gr.Error("Send a message first; then vote on the two answers.")
            vote_id = session.store.add_arena_vote(annotator, waiting["prompt"], waiting["text_a"], waiting["text_b"],
                                                   waiting["model_a"], waiting["model_b"], choice, why,
                                                   waiting["shown_at"])
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


def check_conversation(conversation: list[dict]) -> None:
    if not conversation or conversation[-1].get("role") != "user":
        raise LabelError("the conversation must end with your message")
    if not str(conversation[-1].get("content", "")).strip():
        raise LabelError("your message is empty")
    if any(len(str(m.get("content", ""))) > MAX_MESSAGE_CHARS for m in conversation):
        raise LabelError(f"a message is over {MAX_MESSAGE_CHARS} characters")


def chat_answer(session: LabelSession, annotator: str, conversation: list[dict]):
    """Stream the chat model's reply to `conversation`, then store it; yields (text so far, reply id or None).
    The reply is committed before the page can rate it, so a rating always has a row to land on."""
    check_conversation(conversation)
    seed = random.randrange(2**31)
    text = ""
    for text in session.models.stream(session.chat_model, conversation, seed=seed):
        yield text, None
    reply_id = uuid.uuid4().hex
    session.store.add_reply(reply_id, annotator, session.chat_model, conversation, text,
                            {**session.models.settings(), "seed": seed}, session.chat_model_resolved)
    yield text, reply_id


# gr.LikeData.liked: the thumb up, the thumb down, or "" when the thumb already chosen is clicked again (taken back).
RATINGS = {True: 1, False: -1, "": None}
THUMBS = {1: "Like", -1: "Dislike"}
RATED = {1: "rated good", -1: "rated bad", None: "no longer rated"}


def chat_view(history: list[dict], ratings: dict[str, int | None]) -> gr.Chatbot:
    """The chat as gr.Chatbot shows it: each message (a correction in place of the reply it corrects), and on each
    reply the thumb stored for it."""
    return gr.Chatbot(value=[{"role": m["role"], "content": chat_text(m["content"])} for m in history],
                      feedback_value=[THUMBS.get(ratings.get(m.get("reply_id"))) for m in history
                                      if m["role"] == "assistant"])


def reply_number(history: list[dict], at: int) -> int:
    return sum(m["role"] == "assistant" for m in history[:at + 1])


def build_feedback_tab(session: LabelSession) -> None:
    """Chat with one model. Every reply has a thumb up and down (the other thumb changes the rating, the same one
    again takes it back) and can be edited into the answer you wanted: a correction, and the chat goes on from your
    version. Editing one of your own messages asks the model again from there. Replies, ratings and corrections
    are in the database before the status line says so.

    The page's history (gr.State) lives on the server and holds each reply's id and text as generated, so a page
    can only rate or correct the replies it shows; the ratings shown are read back from the database."""
    models = session.models
    resolved = f" ({session.chat_model_resolved})" if session.chat_model_resolved not in (None, session.chat_model) else ""
    gr.Markdown(f"Chatting with **{session.chat_model}**{resolved}: temperature {models.temperature}, top-p "
                f"{models.top_p}, up to {models.max_new_tokens} new tokens, the model's own chat template.",
                elem_id="feedback-settings")
    chat = gr.Chatbot(label="Chat", elem_id="feedback-chat", editable="all", group_consecutive_messages=False,
                      latex_delimiters=[], buttons=["copy", "copy_all"], height=460,
                      placeholder="Say something to start. Then rate any reply with 👍 or 👎, or edit it (✎) into "
                                  "the answer you wanted.")
    message = gr.Textbox(label="Your message", lines=2, max_length=MAX_MESSAGE_CHARS, elem_id="feedback-message")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="feedback-send")
        new_chat = gr.Button("New conversation", elem_id="feedback-new")
    status = gr.Markdown(elem_id="feedback-status")
    history = gr.State([])
    writing: set[str] = set()  # pages whose reply is being written: an edit or a send then would race it

    def view(past: list[dict]) -> gr.Chatbot:
        return chat_view(past, session.store.ratings([m["reply_id"] for m in past if "reply_id" in m]))

    def answer(annotator: str, past: list[dict], page: str):
        """Stream the reply to `past` (ending with the person's message): yields (chat to show, None), and last
        (chat, history with the stored reply)."""
        if page in writing:
            raise gr.Error("A reply is still being written; wait for it to finish.")
        writing.add(page)
        try:
            ratings = session.store.ratings([m["reply_id"] for m in past if "reply_id" in m])
            yield chat_view(past, ratings), None  # your message at once; the reply follows as it is written
            for text, reply_id in chat_answer(session, annotator, [{"role": m["role"], "content": m["content"]}
                                                                   for m in past]):
                if reply_id is None:
                    yield chat_view(past + [{"role": "assistant", "content": text}], ratings), None
        finally:
            writing.discard(page)
        done = past + [{"role": "assistant", "content": text, "reply": text, "reply_id": reply_id}]
        yield view(done), done

    @label_errors
    def on_send(text: str, past: list, request: gr.Request):
        annotator = session.annotator(request)
        past = past + [{"role": "user", "content": text.strip()}]
        check_conversation(past)  # before anything changes on the page: a refused message stays in its box
        for shown, done in answer(annotator, past, request.session_hash):
            if done is None:
                yield shown, "", gr.skip(), "Writing…"
        yield shown, "", done, (f"Reply {reply_number(done, len(done) - 1)} saved. Rate it with 👍 or 👎, or edit "
                                "it into the answer you wanted; earlier replies too.")

    @label_errors
    def on_like(past: list, liked: gr.LikeData, request: gr.Request) -> str:
        annotator = session.annotator(request)
        at = liked.index if isinstance(liked.index, int) else liked.index[0]
        if not 0 <= at < len(past) or "reply_id" not in past[at]:
            raise gr.Error("This reply is still being written; rate it when it is finished.")
        if liked.liked not in RATINGS:
            raise gr.Error(f"unknown rating {str(liked.liked)[:20]}")
        session.store.rate_reply(past[at]["reply_id"], annotator, RATINGS[liked.liked])
        return f"Saved: reply {reply_number(past, at)} {RATED[RATINGS[liked.liked]]}."

    @label_errors
    def on_edit(past: list, edit: gr.EditData, request: gr.Request):
        annotator = session.annotator(request)
        at = edit.index if isinstance(edit.index, int) else edit.index[0]
        if not 0 <= at < len(past) or request.session_hash in writing:
            yield view(past), gr.skip(), "A reply is still being written; edit when it is finished."
            return
        text, entry = typed_text(str(edit.value)).strip(), past[at]
        if text == entry["content"].strip():
            yield view(past), gr.skip(), "Nothing changed."
            return
        number = reply_number(past, at)
        if entry["role"] == "assistant":  # a correction; editing it back to the reply as written takes it back
            correction = None if text in ("", entry["reply"].strip()) else text
            try:
                session.store.correct_reply(entry["reply_id"], annotator, correction)
            except LabelError as err:  # the page shows the edit until told otherwise: put the message back
                yield view(past), gr.skip(), f"Not saved: {err}"
                return
            dropped = len(past) - at - 1
            past = past[:at] + [{**entry, "content": correction or entry["reply"]}]
            note = (f"Saved your correction of reply {number}; the chat continues from it." if correction else
                    f"Took back your correction of reply {number}; the chat continues from the reply as written.")
            if dropped:
                note += f" The {dropped} messages after it left the page (they stay in the database)."
            yield view(past), past, note
            return
        head = past[:at] + [{"role": "user", "content": text}]
        try:
            check_conversation(head)
        except LabelError as err:
            yield view(past), gr.skip(), f"Not sent: {err}"
            return
        for shown, done in answer(annotator, head, request.session_hash):
            if done is None:
                yield shown, gr.skip(), "Writing…"
        yield shown, done, f"Answered your edited message: reply {reply_number(done, len(done) - 1)} saved."

    def on_new():
        return view([]), [], "New conversation."

    send.click(on_send, [message, history], [chat, message, history, status], api_visibility="private")
    # A thumb writes one row: every click is sent, none dropped while another is on its way.
    chat.like(on_like, [history], status, trigger_mode="multiple", api_visibility="private")
    chat.edit(on_edit, [history], [chat, history, status], api_visibility="private")
    chat.clear(on_new, None, [chat, history, status], api_visibility="private")
    new_chat.click(on_new, None, [chat, history, status], api_visibility="private")


def add_feedback_api(session: LabelSession) -> None:
    @label_errors
    def chat_reply(messages: list[dict], request: gr.Request = None) -> dict:
        """The chat model's reply to a conversation ending with the user's message; stored, with its id."""
        for reply, reply_id in chat_answer(session, session.annotator(request), messages):
            pass
        return {"reply_id": reply_id, "reply": reply}

    @label_errors
    def rate_reply(reply_id: str, rating: int | None, request: gr.Request = None) -> dict:
        """Rate one of your replies: 1 (good), -1 (bad), or null to take the rating back. A new rating replaces
        the earlier one, which stays recorded with its time."""
        session.store.rate_reply(reply_id, session.annotator(request), rating)
        return {"reply_id": reply_id, "rating": rating}

    @label_errors
    def correct_reply(reply_id: str, correction: str, request: gr.Request = None) -> dict:
        """The answer you wanted instead of one of your replies (empty takes it back)."""
        session.store.correct_reply(reply_id, session.annotator(request), correction)
        return {"reply_id": reply_id}

    gr.api(chat_reply, api_name="chat_reply")
    gr.api(rate_reply, api_name="rate_reply")
    gr.api(correct_reply, api_name="correct_reply")


# ---------------------------------------------------------------------------------------------- admin


def build_admin_tab(session: LabelSession) -> None:
    report = gr.Markdown("Press refresh.", elem_id="admin-report")
    refresh = gr.Button("Refresh statistics", elem_id="admin-refresh")

    def on_refresh(request: gr.Request) -> str:
        if not session.is_admin(request):  # the tab is hidden from others, but its event can still be called
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
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:  # shown to admins when the page loads
                build_admin_tab(session)
        if on_load is not None:
            show, outputs = on_load
            app.load(show, None, outputs, api_visibility="private")

        def show_admin_tab(request: gr.Request):
            return gr.Tab(visible=session.is_admin(request))

        app.load(show_admin_tab, None, admin_tab, api_visibility="private")
        add_api(session)
        if session.chat_model is not None:
            add_feedback_api(session)
    app.queue(default_concurrency_limit=16)
    return app
