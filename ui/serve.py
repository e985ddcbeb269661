"""Start the labelling app: `align label ...`, `align arena ...` and `align feedback ...` land here (see `--help`).

    align label --pairs pairs.jsonl --db labels.db --users users.txt
    align label --prompts bundled:prefs_test --models runs/quickstart/sft runs/quickstart/online_dpo --db labels.db
    align arena runs/quickstart/sft runs/quickstart/online_dpo --db labels.db --users users.txt
    align feedback runs/quickstart --db labels.db --users users.txt     # chat, rate and correct replies

Binds to 127.0.0.1 and never opens a public share link unless asked (--host 0.0.0.0, --share).
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading

from align.labelling.accounts import AccountError, LoginGuard, load_accounts
from align.chat import ChatModels, resolved_chat_model
from align.labelling.sources import pair_items, prompt_items
from align.labelling.store import LabelError, LabelStore


def prefetch(session, stop: threading.Event, ahead: int = 4) -> None:
    """Generate the responses of the next few model-written items in the background, so annotators rarely wait.
    A request that reaches an item first generates it itself (LabelSession.write_responses: never twice)."""
    failed: set[str] = set()
    while not stop.is_set():
        todo = [i for i in session.store.items_to_generate(ahead + len(failed)) if i["item_id"] not in failed][:ahead]
        for item in todo:
            if stop.is_set():
                return
            try:
                session.write_responses(item["item_id"])
            except Exception as err:  # keep serving; an annotator who reaches this item is told and moves on
                failed.add(item["item_id"])
                print(f"align label: could not generate item {item['item_id']}: {err}", file=sys.stderr)
        stop.wait(1.0 if todo else 5.0)


def checked_accounts(args, command: str = "label") -> dict:
    accounts = load_accounts(args.users)
    if not accounts and not args.allow_anonymous:
        raise AccountError("no annotator accounts: give --users FILE (see `align labels add-user`) or set "
                           "ALIGN_LABEL_USERS=name:password,...; or pass --allow-anonymous to label without login")
    if accounts and args.allow_anonymous:
        where = " and ".join(filter(None, [args.users, "ALIGN_LABEL_USERS" if os.environ.get("ALIGN_LABEL_USERS") else ""]))
        raise AccountError(f"--allow-anonymous with accounts ({where}): Gradio's login would cover every page, so "
                           "choose one: accounts, or anonymous labelling without them")
    if args.allow_anonymous and (args.share or args.host not in ("127.0.0.1", "localhost")):
        print(f"align {command}: warning: anonymous labelling open beyond this machine: anyone who can reach it "
              "can write labels", file=sys.stderr)
    return accounts


# The app takes no files; its largest real request is a judgment with a reason of at most MAX_REASON_CHARS.
MAX_REQUEST_BYTES = 256 * 1024


# The client address of the request being served: the login check reads it to throttle per address.
client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="unknown")


class ClientAddress:
    """ASGI middleware: makes the request's client address known to the login check (Gradio passes the check
    only the name and password)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            client_address.set((scope.get("client") or ("unknown",))[0])
        return await self.app(scope, receive, send)


class RequestSizeLimit:
    """ASGI middleware: a request body over MAX_REQUEST_BYTES gets 413 before it is read into memory, and a
    chunked body that grows past it is cut off. Uploads (the app has no upload field) are capped by it too."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self.refuse(scope, receive, send)
        received, started, too_large = 0, False, False

        async def counted():
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a chunked body that grew past the limit: the app sees the client leave
                too_large = True
                return {"type": "http.disconnect"}
            return message

        async def watched(message):
            nonlocal started
            if too_large and not started:
                return  # the app's answer to the cut-off body is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)
        if too_large and not started:
            await self.refuse(scope, receive, send)

    async def refuse(self, scope, receive, send):
        from starlette.responses import PlainTextResponse

        response = PlainTextResponse(f"request body over {self.limit} bytes refused", status_code=413)
        await response(scope, receive, send)


def launch(args, label_tab: bool, arena_models: tuple[str, str] | None, model_specs: list[str],
           chat_model: str | None = None, command: str = "label") -> int:
    from starlette.middleware import Middleware

    from align.ui.app import CSS, KEYBOARD_JS, LabelSession, build_app

    log = f"align {command}:"  # the command that started this server, in every line it writes
    accounts = checked_accounts(args, command)
    if args.lease_minutes <= 0:
        raise LabelError(f"--lease-minutes must be positive (got {args.lease_minutes})")
    store = LabelStore(args.db)
    models = None
    model_specs = model_specs + ([chat_model] if chat_model else [])
    if model_specs:
        models = ChatModels(model_specs, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
        for spec in models.specs:  # a typo fails now, not in front of the annotators
            print(f"{log} loading {spec}", flush=True)
            models.load(spec)
    resolved = resolved_chat_model(chat_model) if chat_model else None
    if resolved is not None and resolved != chat_model:
        print(f"{log} chat model {chat_model} is {resolved}", flush=True)
    session = LabelSession(store=store, overlap=args.overlap, lease_seconds=args.lease_minutes * 60, models=models,
                           arena_models=arena_models, chat_model=chat_model, chat_model_resolved=resolved,
                           admins={n for n, a in accounts.items() if a["admin"]}, allow_anonymous=args.allow_anonymous)
    app = build_app(session, label_tab=label_tab)
    stop = threading.Event()
    if models is not None and label_tab:
        threading.Thread(target=prefetch, args=(session, stop), daemon=True, name="prefetch").start()

    guard = LoginGuard(accounts, max_failures=args.login_max_failures, lock_seconds=args.login_lock_minutes * 60,
                       first_delay=args.login_delay_seconds, log=lambda line: print(f"{log} {line}", file=sys.stderr,
                                                                                    flush=True))

    def check(name: str, password: str) -> bool:
        return guard.check(name, password, client_address.get())

    counts = store.counts()
    print(f"{log} {args.db}: {counts['items']} pairs, {counts['judgments']} judgments, "
          f"{counts['replies']} chat replies so far; "
          f"{len(accounts)} accounts{' + anonymous' if args.allow_anonymous else ''}; overlap {args.overlap}",
          flush=True)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, auth=check if accounts else None,
                   auth_message="Log in with your annotator account.", css=CSS, head=KEYBOARD_JS,
                   show_error=True, footer_links=["api"], quiet=False, max_file_size=MAX_REQUEST_BYTES,
                   app_kwargs={"middleware": [Middleware(RequestSizeLimit), Middleware(ClientAddress)]})
    except OSError as err:  # typically the port is taken
        raise LabelError(f"cannot serve on {args.host}:{args.port} ({err}); choose another --port") from None
    finally:
        stop.set()
    return 0


def label(args) -> int:
    if args.models and not args.prompts:
        raise LabelError("--models write responses to --prompts: give --prompts FILE too")
    if args.prompts and not args.models:
        raise LabelError("--prompts need one or two --models to answer them (or use --pairs for ready-made pairs)")
    if args.models and len(args.models) > 2:
        raise LabelError(f"--models takes one or two models (got {len(args.models)})")
    if args.models and len(set(args.models)) == 1 and args.temperature == 0:
        raise LabelError("one model with --temperature 0 writes the same answer twice: sample (--temperature > 0) "
                         "or give two models")
    store = LabelStore(args.db)
    added = 0
    for source in args.pairs or []:
        added += store.add_items(pair_items(source), source)
    if args.prompts:
        added += store.add_items(prompt_items(args.prompts, args.models), args.prompts)
    if store.counts()["items"] == 0:
        raise LabelError(f"{args.db}: no pairs to label: give --pairs FILE, or --prompts FILE with --models")
    print(f"align label: {added} new pairs added to {args.db}", flush=True)
    store.close()
    arena = tuple(args.models) if args.models and len(args.models) == 2 else None
    return launch(args, label_tab=True, arena_models=arena, model_specs=args.models or [], chat_model=args.chat)


def arena(args) -> int:
    return launch(args, label_tab=False, arena_models=(args.model_a, args.model_b),
                  model_specs=[args.model_a, args.model_b], command="arena")


def feedback(args) -> int:
    return launch(args, label_tab=False, arena_models=None, model_specs=[], chat_model=args.model, command="feedback")
