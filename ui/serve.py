"""Start the labelling app: `align label ...` and `align arena ...` land here (see `align label --help`).

    align label --pairs pairs.jsonl --db labels.db --users users.txt
    align label --prompts bundled:prefs_test --models runs/quickstart/sft runs/quickstart/dpo --db labels.db
    align arena runs/quickstart/sft runs/quickstart/dpo --db labels.db --users users.txt

Binds to 127.0.0.1 and never opens a public share link unless asked (--host 0.0.0.0, --share).
"""

from __future__ import annotations

import sys
import threading
import time

from align.annotators import AccountError, load_accounts, password_matches
from align.chat import ChatModels
from align.labels import LabelError, LabelStore, pair_items, prompt_items


def prefetch(session, stop: threading.Event, ahead: int = 4) -> None:
    """Generate the responses of the next few model-written items in the background, so annotators rarely wait.
    A request that reaches an item first generates it itself; the seeds make both give the same texts."""
    while not stop.is_set():
        try:
            todo = session.store.items_to_generate(ahead)
            for item in todo:
                if stop.is_set():
                    return
                session.store.set_responses(item["item_id"], *session.models.candidates(item))
        except Exception as err:  # keep serving labels even if a model fails; the request path reports it
            print(f"align label: background generation failed: {err}", file=sys.stderr)
            todo = []
        stop.wait(1.0 if todo else 5.0)


def accounts_or_exit(args) -> dict:
    accounts = load_accounts(args.users)
    if not accounts and not args.allow_anonymous:
        raise AccountError("no annotator accounts: give --users FILE (see `align labels add-user`) or set "
                           "ALIGN_LABEL_USERS=name:password,...; or pass --allow-anonymous to label without login")
    return accounts


def launch(args, label_tab: bool, arena_models: tuple[str, str] | None, model_specs: list[str]) -> int:
    from ui.app import CSS, KEYBOARD_JS, LabelSession, build_app

    accounts = accounts_or_exit(args)
    store = LabelStore(args.db)
    models = None
    if model_specs:
        models = ChatModels(model_specs, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed)
    session = LabelSession(store=store, overlap=args.overlap, lease_seconds=args.lease_minutes * 60, models=models,
                           arena_models=arena_models, admins={n for n, a in accounts.items() if a["admin"]},
                           allow_anonymous=args.allow_anonymous)
    app = build_app(session, label_tab=label_tab)
    stop = threading.Event()
    if models is not None and label_tab:
        threading.Thread(target=prefetch, args=(session, stop), daemon=True, name="prefetch").start()

    def check(name: str, password: str) -> bool:
        account = accounts.get(name)
        return account is not None and password_matches(account["password"], password)

    counts = store.counts()
    print(f"align label: {args.db}: {counts['items']} pairs, {counts['judgments']} judgments so far; "
          f"{len(accounts)} accounts{' + anonymous' if args.allow_anonymous else ''}; overlap {args.overlap}",
          flush=True)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, auth=check if accounts else None,
                   auth_message="Log in with your annotator account.", css=CSS, head=KEYBOARD_JS,
                   show_error=True, footer_links=["api"], quiet=False)
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
    return launch(args, label_tab=True, arena_models=arena, model_specs=args.models or [])


def arena(args) -> int:
    return launch(args, label_tab=False, arena_models=(args.model_a, args.model_b),
                  model_specs=[args.model_a, args.model_b])


def wait_until_up(url: str, timeout: float = 120.0) -> None:
    """For tests and scripts: block until the server answers."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.3)
