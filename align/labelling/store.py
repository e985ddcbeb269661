"""The preference-label store: an SQLite database (WAL) that the labelling app writes and recipes read.

    align label --pairs pairs.jsonl --db labels.db --users users.txt   # annotators fill it (ui/)
    align labels stats labels.db                                       # counts, agreement, position bias
    align labels export labels.db prefs.jsonl                          # or use it directly in a recipe:
    dpo: {dataset: {labels: labels.db}}

Items are prompts with two responses (response 1 and 2). Each annotator gets an item at most once, with the two
responses in a random left/right order (the `assignments` row records which one was shown as A); at most
`overlap` annotators get each item. A judgment row keeps the exact texts shown, the mapping, the choice and
the times, and is committed before the browser hears back, so a killed server loses nothing acknowledged.
Undo never deletes: it marks the judgment undone and hands the item back to the same annotator.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CHOICES = ("A", "B", "tie", "both_bad")
SCHEMA_VERSION = "1"
MAX_REASON_CHARS = 2000  # a reason is a sentence or two; longer input is refused, not stored
MAX_ITEM_ID_CHARS = 200
MAX_CORRECTION_CHARS = 8000  # an answer, not a document
DEFAULT_LEASE_SECONDS = 3600.0  # an item shown but not judged for this long may go to another annotator
REVOKED = -1  # assignments.done: the lease ran out and the pair went to someone else
# How many annotators hold pair i: judged it, or were shown it within the lease (parameter: now - lease).
HOLDERS = ("(SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.item_id "
           "AND (a.done = 1 OR (a.done = 0 AND a.assigned_at > ?)))")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id     TEXT PRIMARY KEY,
    position    INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('pair', 'arena')),
    source      TEXT NOT NULL,
    prompt      TEXT NOT NULL,          -- JSON list of chat messages
    response_1  TEXT,                   -- NULL until a model has generated it
    response_2  TEXT,
    model_1     TEXT,
    model_2     TEXT,
    extra       TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    item_id     TEXT NOT NULL REFERENCES items(item_id),
    annotator   TEXT NOT NULL,
    a_response  INTEGER NOT NULL CHECK (a_response IN (1, 2)),
    assigned_at REAL NOT NULL,
    done        INTEGER NOT NULL DEFAULT 0,   -- 0 open, 1 judged, -1 revoked (lease ran out)
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS judgments (
    judgment_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id      TEXT NOT NULL REFERENCES items(item_id),
    annotator    TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    text_a       TEXT NOT NULL,
    text_b       TEXT NOT NULL,
    model_a      TEXT,
    model_b      TEXT,
    a_response   INTEGER NOT NULL CHECK (a_response IN (1, 2)),
    choice       TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
    reason       TEXT NOT NULL DEFAULT '',
    shown_at     REAL NOT NULL,
    submitted_at REAL NOT NULL,
    undone_at    REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_judgment ON judgments(item_id, annotator) WHERE undone_at IS NULL;
-- Chat feedback: every reply a model gave in the chat tab, then the person's rating and correction of it.
CREATE TABLE IF NOT EXISTS replies (
    reply_id     TEXT PRIMARY KEY,       -- made by the app before generating: a retried save is stored once
    annotator    TEXT NOT NULL,
    model        TEXT NOT NULL,          -- the model as the person serving it named it (`embedded`, a run dir)
    conversation TEXT NOT NULL,          -- JSON: every message shown before this reply (system first if any)
    reply        TEXT NOT NULL,          -- the reply exactly as generated and shown
    settings     TEXT NOT NULL,          -- JSON: temperature, top_p, max_new_tokens, seed
    created_at   REAL NOT NULL,
    rating       INTEGER CHECK (rating IN (-1, 1)),   -- NULL: not rated
    rated_at     REAL,
    correction   TEXT,                   -- the answer the person wanted instead; NULL: none
    corrected_at REAL,
    model_resolved TEXT                  -- what `model` loaded: weights directory or hub id, and adapter; NULL
                                         -- in rows stored before align recorded it
);
CREATE INDEX IF NOT EXISTS replies_by_annotator ON replies(annotator, created_at);
CREATE INDEX IF NOT EXISTS judgments_by_annotator ON judgments(annotator, submitted_at);
"""


# Every rating and correction as given, oldest first. `replies` holds the current one; a re-rating or a new
# correction replaces it there, and this keeps the earlier ones with their times.
FEEDBACK_HISTORY = """
CREATE TABLE feedback_history (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    reply_id   TEXT NOT NULL REFERENCES replies(reply_id),
    annotator  TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('rating', 'correction')),
    rating     INTEGER CHECK (rating IN (-1, 1)),   -- kind 'rating', NULL: the rating was taken back
    correction TEXT,                                -- kind 'correction', NULL: the correction was taken back
    at         REAL NOT NULL
)
"""


class LabelError(ValueError):
    """A label request that cannot be honoured (unknown item, bad choice, nothing to undo, bad source row)."""


def check_judgment(choice: str, reason: str | None) -> None:
    if choice not in CHOICES:
        raise LabelError(f"choice '{str(choice)[:40]}' is not one of {', '.join(CHOICES)}")
    if reason is not None and not isinstance(reason, str):
        raise LabelError(f"reason must be text, got {type(reason).__name__}")
    if reason and len(reason) > MAX_REASON_CHARS:
        raise LabelError(f"reason is {len(reason)} characters; at most {MAX_REASON_CHARS} are kept, so shorten it")


def check_reply_id(reply_id) -> None:
    if not isinstance(reply_id, str) or not reply_id or len(reply_id) > MAX_ITEM_ID_CHARS:
        raise LabelError(f"reply id must be text of 1 to {MAX_ITEM_ID_CHARS} characters")


def _prompt_json(prompt) -> str:
    """A prompt as the items table stores it."""
    return json.dumps(prompt, ensure_ascii=False)


def answer_pair(prompt, text_1: str | None, text_2: str | None) -> tuple[str, frozenset]:
    """Two answers to a prompt, whatever their order and whoever queued them: the comparison a label is about."""
    return _prompt_json(prompt), frozenset((text_1, text_2))


def item_id_for(prompt: list[dict], response_1: str | None, response_2: str | None, models=(None, None)) -> str:
    """Content-derived id, so importing the same file twice adds nothing."""
    key = json.dumps([prompt, response_1, response_2, list(models)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class LabelStore:
    """One database file; safe to share between the threads of a web server and between processes."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser()
        if not create and not self.path.is_file():
            raise LabelError(f"{path}: no label database here (labels are collected with `align label`)")
        if self.path.is_file():
            self._check_is_label_database()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.connection().executescript(SCHEMA)  # executescript commits by itself; every statement is idempotent
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            self._migrate(db)
        version = self.meta("schema_version")
        if version != SCHEMA_VERSION:
            raise LabelError(f"{path}: label database schema {version}, this align reads {SCHEMA_VERSION}")

    def _check_is_label_database(self) -> None:
        """Look before writing: never add our tables to some other SQLite file."""
        try:
            probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and not {"meta", "items", "judgments"} <= tables:
                    raise LabelError(f"{self.path}: an SQLite file, but not a label database (tables: "
                                     f"{', '.join(sorted(tables))})")
            finally:
                probe.close()
        except sqlite3.Error as err:
            raise LabelError(f"{self.path}: not a label database ({err})") from None

    @staticmethod
    def _migrate(db) -> None:
        """Bring a database made by an earlier align up to date. Only additions (a column, a table filled from
        what is stored), so nothing stored changes and an earlier align still reads and writes the file; hence
        no new schema_version. Inside the opening transaction: two servers starting at once migrate once."""
        if "model_resolved" not in {row["name"] for row in db.execute("PRAGMA table_info(replies)")}:
            db.execute("ALTER TABLE replies ADD COLUMN model_resolved TEXT")
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feedback_history'").fetchone():
            return
        db.execute(FEEDBACK_HISTORY)
        db.execute("CREATE INDEX feedback_history_by_reply ON feedback_history(reply_id, event_id)")
        # The ratings and corrections given before the history was kept are its first entries.
        db.execute("INSERT INTO feedback_history (reply_id, annotator, kind, rating, correction, at) "
                   "SELECT reply_id, annotator, kind, rating, correction, at FROM ("
                   "SELECT reply_id, annotator, 'rating' AS kind, rating, NULL AS correction, rated_at AS at "
                   "FROM replies WHERE rated_at IS NOT NULL UNION ALL "
                   "SELECT reply_id, annotator, 'correction', NULL, correction, corrected_at "
                   "FROM replies WHERE corrected_at IS NOT NULL) ORDER BY at")

    # ------------------------------------------------------------------------------------------ connection

    def connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as err:
                raise LabelError(f"{self.path}: not a label database ({err})") from None
            # FULL: a judgment acknowledged to the browser survives the machine losing power, not just a kill.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE takes the write lock up front, so read-then-write steps (picking an item for an
        annotator) cannot interleave with another writer's."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if "full" in str(err):  # SQLITE_FULL: the disk (or the database's size limit) is full
                raise LabelError(f"{self.path}: the disk is full, so this was not saved (everything saved before "
                                 f"is intact); free some space and try again") from err
            raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def meta(self, key: str) -> str | None:
        row = self.connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------------------------------ items

    def add_items(self, items: list[dict], source: str, kind: str = "pair") -> int:
        """Add items {prompt, response_1, response_2, model_1, model_2, id?, extra?}; returns how many were new.
        An item whose id exists with different content is an error, never a silent overwrite."""
        added = 0
        with self.transaction() as db:
            position = db.execute("SELECT COALESCE(MAX(position), 0) FROM items").fetchone()[0]
            for item in items:
                models = (item.get("model_1"), item.get("model_2"))
                item_id = str(item.get("id") or item_id_for(item["prompt"], item.get("response_1"),
                                                            item.get("response_2"), models))
                prompt = _prompt_json(item["prompt"])
                old = db.execute("SELECT prompt, response_1, response_2, model_1, model_2 FROM items "
                                 "WHERE item_id = ?", (item_id,)).fetchone()
                if old is not None:
                    responses = (item.get("response_1"), item.get("response_2"))
                    if old["prompt"] != prompt or (old["model_1"], old["model_2"]) != models or (
                            responses[0] is not None and (old["response_1"], old["response_2"]) != responses):
                        raise LabelError(f"{item.get('where', source)}: item id '{item_id}' is already in "
                                         f"{self.path} with a different prompt, responses or models; give it a new id")
                    continue
                position += 1
                db.execute(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (item_id, position, kind, source, prompt, item.get("response_1"), item.get("response_2"),
                     models[0], models[1], json.dumps(item.get("extra") or {}, ensure_ascii=False), time.time()),
                )
                added += 1
        return added

    def unseen_answer_pairs(self, items: list[dict]) -> list[dict]:
        """The items whose two answers to their prompt no pair item here has, whatever models and order those
        were queued with: what add_items would queue without repeating a comparison already asked for."""
        rows = self.connection().execute(
            "SELECT prompt, response_1, response_2 FROM items WHERE kind = 'pair' AND response_1 IS NOT NULL")
        held = {(r["prompt"], frozenset((r["response_1"], r["response_2"]))) for r in rows}
        return [item for item in items
                if answer_pair(item["prompt"], item.get("response_1"), item.get("response_2")) not in held]

    def set_responses(self, item_id: str, response_1: str, response_2: str) -> None:
        """Fill a generated item once; a second generator racing for the same item does not overwrite it."""
        with self.transaction() as db:
            db.execute("UPDATE items SET response_1 = ?, response_2 = ? WHERE item_id = ? AND response_1 IS NULL",
                       (response_1, response_2, item_id))

    def sources(self) -> list[str]:
        """Where the pairs came from (a file, a run's reward stage, an online round), in the order first queued."""
        rows = self.connection().execute("SELECT source FROM items GROUP BY source ORDER BY MIN(position)")
        return [r["source"] for r in rows]

    def item(self, item_id: str) -> dict | None:
        row = self.connection().execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return _item_dict(row) if row else None

    def items_to_generate(self, limit: int) -> list[dict]:
        rows = self.connection().execute(
            "SELECT * FROM items WHERE kind = 'pair' AND response_1 IS NULL ORDER BY position LIMIT ?", (limit,)
        ).fetchall()
        return [_item_dict(r) for r in rows]

    # ------------------------------------------------------------------------------------------ labelling

    def next_assignment(self, annotator: str, overlap: int = 1, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                        rng: random.Random | None = None, generated_only: bool = False,
                        source: str | None = None) -> dict | None:
        """The item this annotator should judge now, or None when nothing is left for them.

        An open assignment (shown, not yet judged; or handed back by undo) comes first, so a page reload shows
        the same pair in the same order. Otherwise an item they have never been given and that fewer than
        `overlap` annotators hold (judged, or shown within the lease) is assigned; items already partly covered
        go first so overlapping judgments, and the agreement figures, accumulate early. `generated_only` skips
        items whose responses no model has written (a session without models); `source` gives only the items
        queued from that source (one training round's pairs, say)."""
        with self.transaction() as db:  # one write lock from the pick to the insert: no one takes it in between
            item_id = self._open_assignment(db, annotator, source)
            if item_id is None:
                waiting = self._waiting_items(db, annotator, overlap, lease_seconds, generated_only, source, limit=1)
                if not waiting or not self._assign(db, annotator, waiting[0], overlap, lease_seconds, rng):
                    return None
                item_id = waiting[0]
        return self.assignment(annotator, item_id)

    def assignments(self, annotator: str, overlap: int = 1, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                    rng: random.Random | None = None, generated_only: bool = False, source: str | None = None,
                    batch: int = 256):
        """next_assignment's pairs one after another, for an annotator that judges (or releases) each one before
        taking the next, as a labeller does. Alone in the database it gives the pairs one-by-one asking would, in
        the same order, A/B drawn from `rng` at the same points: first the pairs it holds open (newest first),
        then the waiting ones. Finding the waiting pairs reads every pair of the source, so it is done for
        `batch` pairs at a time instead of once per pair (which made labelling a source quadratic in its size).
        While others label too, what waits changes under a batch: a pair of it that `overlap` annotators hold by
        the time its turn comes is skipped, and partly covered pairs others started meanwhile wait for the next
        batch rather than going first."""
        given = set()
        while True:
            with self.transaction() as db:
                item_id = self._open_assignment(db, annotator, source)
            if item_id is None or item_id in given:  # the same one again: the caller left it open
                break
            given.add(item_id)
            yield self.assignment(annotator, item_id)
        while waiting := self._waiting_items(self.connection(), annotator, overlap, lease_seconds, generated_only,
                                             source, batch):
            for item_id in waiting:
                with self.transaction() as db:
                    assigned = self._assign(db, annotator, item_id, overlap, lease_seconds, rng)
                if assigned:
                    yield self.assignment(annotator, item_id)

    @staticmethod
    def _open_assignment(db, annotator: str, source: str | None) -> str | None:
        """The annotator's latest pair shown but not judged, its lease renewed from now (still on screen)."""
        row = db.execute(
            "SELECT a.item_id FROM assignments a JOIN items i ON i.item_id = a.item_id WHERE a.annotator = ? "
            "AND a.done = 0 AND (? IS NULL OR i.source = ?) ORDER BY a.assigned_at DESC LIMIT 1",
            (annotator, source, source),
        ).fetchone()
        if row is None:
            return None
        db.execute("UPDATE assignments SET assigned_at = ? WHERE item_id = ? AND annotator = ?",
                   (time.time(), row["item_id"], annotator))
        return row["item_id"]

    @staticmethod
    def _waiting_items(db, annotator: str, overlap: int, lease_seconds: float, generated_only: bool,
                       source: str | None, limit: int) -> list[str]:
        """Up to `limit` pairs the annotator was never given and fewer than `overlap` annotators hold, partly
        covered ones first, then in queue order."""
        rows = db.execute(
            f"""
            SELECT i.item_id, {HOLDERS} AS taken
            FROM items i
            WHERE i.kind = 'pair' {"AND i.response_1 IS NOT NULL" if generated_only else ""}
              AND (? IS NULL OR i.source = ?)
              AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.item_id AND a.annotator = ?)
              AND taken < ?
            ORDER BY taken DESC, i.position LIMIT ?
            """,
            (time.time() - lease_seconds, source, source, annotator, overlap, limit),
        ).fetchall()
        return [row["item_id"] for row in rows]

    @staticmethod
    def _assign(db, annotator: str, item_id: str, overlap: int, lease_seconds: float,
                rng: random.Random | None) -> bool:
        """Give `item_id` to the annotator (A/B order drawn from `rng`), inside the caller's transaction; False if
        they had it before or `overlap` annotators hold it by now."""
        now = time.time()
        held = db.execute(f"SELECT EXISTS (SELECT 1 FROM assignments WHERE item_id = ? AND annotator = ?), "
                          f"{HOLDERS} FROM items i WHERE i.item_id = ?",
                          (item_id, annotator, now - lease_seconds, item_id)).fetchone()
        if held is None or held[0] or held[1] >= overlap:
            return False
        # Whoever let their lease on this pair run out loses it, so it never gets more than `overlap`.
        db.execute("UPDATE assignments SET done = ? WHERE item_id = ? AND done = 0 AND assigned_at <= ?",
                   (REVOKED, item_id, now - lease_seconds))
        a_response = (rng or random).choice((1, 2))
        db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, 0)", (item_id, annotator, a_response, now))
        return True

    def assignment(self, annotator: str, item_id: str) -> dict | None:
        """What `annotator` sees for `item_id`: prompt, text_a, text_b (None until generated), models, mapping."""
        row = self.connection().execute(
            "SELECT i.*, a.a_response, a.assigned_at, a.done FROM assignments a JOIN items i USING (item_id) "
            "WHERE a.annotator = ? AND a.item_id = ?",
            (annotator, item_id),
        ).fetchone()
        if row is None:
            return None
        item = _item_dict(row)
        first, second = (1, 2) if row["a_response"] == 1 else (2, 1)
        return {
            "item_id": item["item_id"],
            "prompt": item["prompt"],
            "text_a": item[f"response_{first}"],
            "text_b": item[f"response_{second}"],
            "model_a": item[f"model_{first}"],
            "model_b": item[f"model_{second}"],
            "a_response": row["a_response"],
            "shown_at": row["assigned_at"],
            "done": row["done"] == 1,
        }

    def submit(self, annotator: str, item_id: str, choice: str, reason: str = "") -> int:
        """Record a judgment and return its id. Submitting the same choice again (a retry after a lost reply)
        returns the first id instead of adding a row; a different choice for a judged item is refused."""
        check_judgment(choice, reason)
        if not isinstance(item_id, str) or len(item_id) > MAX_ITEM_ID_CHARS:
            raise LabelError(f"item id must be a string of at most {MAX_ITEM_ID_CHARS} characters")
        reason = (reason or "").strip()
        with self.transaction() as db:
            shown = self._assignment_row(db, annotator, item_id)
            live = db.execute(
                "SELECT judgment_id, choice FROM judgments WHERE item_id = ? AND annotator = ? AND undone_at IS NULL",
                (item_id, annotator),
            ).fetchone()
            if live is not None:
                if live["choice"] == choice:
                    return live["judgment_id"]
                raise LabelError(f"item {item_id} is already judged '{live['choice']}' by {annotator}; undo it first")
            if shown["done"] == REVOKED:
                raise LabelError(f"item {item_id} was given to someone else after it waited longer than the lease; "
                                 "take the next pair")
            view = self.assignment(annotator, item_id)
            if view["text_a"] is None:
                raise LabelError(f"item {item_id} has no responses yet (still generating)")
            cursor = db.execute(
                "INSERT INTO judgments (item_id, annotator, prompt, text_a, text_b, model_a, model_b, a_response, "
                "choice, reason, shown_at, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, annotator, json.dumps(view["prompt"], ensure_ascii=False), view["text_a"], view["text_b"],
                 view["model_a"], view["model_b"], shown["a_response"], choice, reason, shown["assigned_at"],
                 time.time()),
            )
            db.execute("UPDATE assignments SET done = 1 WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            return cursor.lastrowid

    def _assignment_row(self, db, annotator: str, item_id: str):
        shown = db.execute("SELECT * FROM assignments WHERE item_id = ? AND annotator = ?",
                           (item_id, annotator)).fetchone()
        if shown is None:
            raise LabelError(f"item {item_id} was not given to {annotator}; ask for the next pair first")
        return shown

    def release(self, annotator: str, item_id: str) -> None:
        """Take back an unjudged pair from an annotator (its responses could not be generated)."""
        with self.transaction() as db:
            db.execute("UPDATE assignments SET done = ? WHERE item_id = ? AND annotator = ? AND done = 0",
                       (REVOKED, item_id, annotator))

    def undo_last(self, annotator: str) -> dict:
        """Mark the annotator's latest pair judgment undone and hand that item back to them (same A/B order)."""
        with self.transaction() as db:
            last = db.execute(
                "SELECT j.judgment_id, j.item_id, j.choice FROM judgments j JOIN items i USING (item_id) "
                "WHERE j.annotator = ? AND j.undone_at IS NULL AND i.kind = 'pair' "
                "ORDER BY j.submitted_at DESC, j.judgment_id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if last is None:
                raise LabelError(f"{annotator} has no judgment to undo")
            now = time.time()
            db.execute("UPDATE judgments SET undone_at = ? WHERE judgment_id = ?", (now, last["judgment_id"]))
            # The newest open assignment is shown first, so the undone pair comes straight back.
            db.execute("UPDATE assignments SET done = 0, assigned_at = ? WHERE item_id = ? AND annotator = ?",
                       (now, last["item_id"], annotator))
        return {"judgment_id": last["judgment_id"], "item_id": last["item_id"], "choice": last["choice"]}

    def add_arena_vote(self, annotator: str, prompt: list[dict], text_a: str, text_b: str, model_a: str,
                       model_b: str, choice: str, reason: str = "", shown_at: float | None = None) -> int:
        """An arena round: the conversation, both models' answers as shown, and the vote, in one transaction."""
        check_judgment(choice, reason)
        now = time.time()
        item_id = item_id_for(prompt, text_a, text_b, (model_a, model_b)) + f"-{annotator}-{now:.6f}"
        conversation = json.dumps(prompt, ensure_ascii=False)
        with self.transaction() as db:
            position = db.execute("SELECT COALESCE(MAX(position), 0) FROM items").fetchone()[0] + 1
            db.execute("INSERT INTO items VALUES (?, ?, 'arena', 'arena', ?, ?, ?, ?, ?, '{}', ?)",
                       (item_id, position, conversation, text_a, text_b, model_a, model_b, now))
            db.execute("INSERT INTO assignments VALUES (?, ?, 1, ?, 1)", (item_id, annotator, shown_at or now))
            cursor = db.execute(
                "INSERT INTO judgments (item_id, annotator, prompt, text_a, text_b, model_a, model_b, a_response, "
                "choice, reason, shown_at, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                (item_id, annotator, conversation, text_a, text_b, model_a, model_b, choice, (reason or "").strip(),
                 shown_at or now, now),
            )
            return cursor.lastrowid

    # ------------------------------------------------------------------------------------------ chat feedback

    def add_reply(self, reply_id: str, annotator: str, model: str, conversation: list[dict], reply: str,
                  settings: dict, model_resolved: str | None = None) -> bool:
        """Store a reply as shown; True if new. The same id again with the same content is a retry (nothing
        added); with other content it is an error, never an overwrite. `model` is the name given to the server,
        `model_resolved` what it loaded."""
        check_reply_id(reply_id)
        if not isinstance(reply, str) or not isinstance(conversation, list) or not conversation:
            raise LabelError("a reply needs its text and the conversation it answers")
        shown = json.dumps(conversation, ensure_ascii=False)
        with self.transaction() as db:
            old = db.execute("SELECT annotator, conversation, reply FROM replies WHERE reply_id = ?",
                             (reply_id,)).fetchone()
            if old is not None:
                if tuple(old) != (annotator, shown, reply):
                    raise LabelError(f"reply {reply_id}: already stored with other content")
                return False
            db.execute("INSERT INTO replies (reply_id, annotator, model, conversation, reply, settings, created_at, "
                       "model_resolved) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (reply_id, annotator, model, shown, reply, json.dumps(settings, sort_keys=True), time.time(),
                        model_resolved))
        return True

    def rate_reply(self, reply_id: str, annotator: str, rating: int | None) -> None:
        """Thumbs up (1), down (-1), or take the rating back (None); only the person who chatted may rate. A new
        rating replaces the current one (the earlier stays in feedback_history); the same one again is a retry
        and changes nothing, not even its time."""
        if rating not in (1, -1, None):
            raise LabelError(f"rating must be 1 (up), -1 (down) or none, got {str(rating)[:20]}")
        with self.transaction() as db:
            reply = self._own_reply(db, reply_id, annotator)
            if reply["rating"] == rating:
                return
            now = time.time()
            db.execute("UPDATE replies SET rating = ?, rated_at = ? WHERE reply_id = ?", (rating, now, reply_id))
            db.execute("INSERT INTO feedback_history (reply_id, annotator, kind, rating, at) "
                       "VALUES (?, ?, 'rating', ?, ?)", (reply_id, annotator, rating, now))

    def correct_reply(self, reply_id: str, annotator: str, correction: str | None) -> None:
        """The answer the person wanted instead (None or blank takes it back)."""
        if correction is not None and not isinstance(correction, str):
            raise LabelError(f"a correction must be text, got {type(correction).__name__}")
        text = (correction or "").strip() or None
        if text and len(text) > MAX_CORRECTION_CHARS:
            raise LabelError(f"the correction is {len(text)} characters; at most {MAX_CORRECTION_CHARS} are kept")
        with self.transaction() as db:
            reply = self._own_reply(db, reply_id, annotator)
            if text is not None and text == reply["reply"].strip():
                raise LabelError("the correction is the reply unchanged; edit it into the answer you wanted")
            if reply["correction"] == text:
                return  # a retry
            now = time.time()
            db.execute("UPDATE replies SET correction = ?, corrected_at = ? WHERE reply_id = ?", (text, now, reply_id))
            db.execute("INSERT INTO feedback_history (reply_id, annotator, kind, correction, at) "
                       "VALUES (?, ?, 'correction', ?, ?)", (reply_id, annotator, text, now))

    def _own_reply(self, db, reply_id: str, annotator: str):
        row = db.execute("SELECT * FROM replies WHERE reply_id = ?", (str(reply_id)[:MAX_ITEM_ID_CHARS],)).fetchone()
        if row is None or row["annotator"] != annotator:
            raise LabelError(f"no reply {str(reply_id)[:40]} of yours to rate or correct")
        return row

    def replies(self, annotator: str | None = None) -> list[dict]:
        """Stored replies, oldest first, with conversation and settings decoded."""
        where, args = ("WHERE annotator = ?", (annotator,)) if annotator else ("", ())
        rows = self.connection().execute(f"SELECT * FROM replies {where} ORDER BY created_at, reply_id",
                                         args).fetchall()
        return [{**dict(r), "conversation": json.loads(r["conversation"]), "settings": json.loads(r["settings"])}
                for r in rows]

    def ratings(self, reply_ids: list[str]) -> dict[str, int | None]:
        """The current rating of each of these replies (a chat page shows them)."""
        rows = self.connection().execute(
            f"SELECT reply_id, rating FROM replies WHERE reply_id IN ({', '.join('?' * len(reply_ids))})", reply_ids)
        return {r["reply_id"]: r["rating"] for r in rows}

    def feedback_history(self, reply_id: str | None = None) -> list[dict]:
        """Every rating and correction as given (of one reply, or all), oldest first; `replies` has the current."""
        where, args = ("WHERE reply_id = ?", (reply_id,)) if reply_id else ("", ())
        rows = self.connection().execute(f"SELECT * FROM feedback_history {where} ORDER BY event_id", args)
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------------------------------ reading

    def progress(self, annotator: str, overlap: int = 1, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> dict:
        """done: this annotator's live judgments; left: items they could still be given (or hold open);
        all_done / all_needed: judgments so far against items x overlap."""
        db = self.connection()
        done = db.execute("SELECT COUNT(*) FROM judgments j JOIN items i USING (item_id) WHERE j.annotator = ? "
                          "AND j.undone_at IS NULL AND i.kind = 'pair'", (annotator,)).fetchone()[0]
        left = db.execute(
            f"""
            SELECT COUNT(*) FROM items i WHERE i.kind = 'pair' AND (
                EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.item_id AND a.annotator = ? AND a.done = 0)
                OR (NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.item_id AND a.annotator = ?)
                    AND {HOLDERS} < ?))
            """,
            (annotator, annotator, time.time() - lease_seconds, overlap),
        ).fetchone()[0]
        items = db.execute("SELECT COUNT(*) FROM items WHERE kind = 'pair'").fetchone()[0]
        all_done = db.execute("SELECT COUNT(*) FROM judgments j JOIN items i USING (item_id) "
                              "WHERE j.undone_at IS NULL AND i.kind = 'pair'").fetchone()[0]
        return {"done": done, "left": left, "items": items, "all_done": all_done, "all_needed": items * overlap}

    def judgments(self, include_undone: bool = False) -> list[dict]:
        """Every judgment (labelling and arena), oldest first, with the prompt decoded."""
        where = "" if include_undone else "WHERE j.undone_at IS NULL"
        rows = self.connection().execute(
            f"SELECT j.*, i.kind, i.source FROM judgments j JOIN items i USING (item_id) {where} "
            "ORDER BY j.judgment_id"
        ).fetchall()
        return [{**dict(r), "prompt": json.loads(r["prompt"])} for r in rows]

    def counts(self) -> dict:
        db = self.connection()
        return {
            "items": db.execute("SELECT COUNT(*) FROM items WHERE kind = 'pair'").fetchone()[0],
            "arena_rounds": db.execute("SELECT COUNT(*) FROM items WHERE kind = 'arena'").fetchone()[0],
            "judgments": db.execute("SELECT COUNT(*) FROM judgments WHERE undone_at IS NULL").fetchone()[0],
            "undone": db.execute("SELECT COUNT(*) FROM judgments WHERE undone_at IS NOT NULL").fetchone()[0],
            "replies": db.execute("SELECT COUNT(*) FROM replies").fetchone()[0],
            "rated": db.execute("SELECT COUNT(*) FROM replies WHERE rating IS NOT NULL").fetchone()[0],
            "corrected": db.execute("SELECT COUNT(*) FROM replies WHERE correction IS NOT NULL").fetchone()[0],
        }

    def backup(self, target: str | Path, overwrite: bool = False) -> dict:
        """A consistent copy of the database while others keep writing (SQLite's online backup: it restarts its
        page copy when a writer changes the source, so the copy is one committed state). The copy is written
        beside the target and renamed into place, so a target never holds half a backup. An existing target (an
        earlier backup, perhaps the only good one) is replaced only with `overwrite`."""
        target = Path(target).expanduser()
        if target.resolve() == self.path.resolve():
            raise LabelError(f"{target}: the backup must go to another file than the database itself")
        if target.exists() and not overwrite:
            raise LabelError(f"{target}: already exists; name a new file (e.g. with the date in it), or pass --force "
                             f"to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        copy = sqlite3.connect(tmp)
        try:
            self.connection().backup(copy, pages=256, sleep=0.01)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            copy.close()
        os.replace(tmp, target)
        return check_database(target)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def check_database(path: str | Path) -> dict:
    """SQLite's integrity check and the row count of every table; raises LabelError when the check fails."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LabelError(f"{path}: no label database here")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                               "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        counts = {table: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}
    except sqlite3.DatabaseError as err:
        raise LabelError(f"{path}: not a readable SQLite database ({err})") from None
    finally:
        db.close()
    if verdict != ["ok"]:
        raise LabelError(f"{path}: integrity check failed: {'; '.join(verdict[:5])}")
    if not {"meta", "items", "judgments"} <= set(counts):
        raise LabelError(f"{path}: an SQLite file, but not a label database (tables: {', '.join(tables)})")
    return {"path": str(path), "integrity": "ok", "rows": counts}


def _item_dict(row) -> dict:
    item = dict(row)
    item["prompt"] = json.loads(item["prompt"])
    item["extra"] = json.loads(item.get("extra") or "{}")
    return item


# ---------------------------------------------------------------------------------------------- preference rows


def preference_rows(judgments: list[dict], keep_ties: bool = False, majority: bool = False) -> list[dict]:
    """Judgments as preference rows {prompt, chosen, rejected} plus who/what/why columns.

    Each A/B judgment is one row (InstructGPT trains on every comparison; disagreeing annotators cancel out).
    `majority` instead gives one row per item, for the response more annotators preferred (items without a
    strict winner are dropped). `keep_ties` keeps ties and both-bad judgments, with response A as "chosen" and
    the `choice` column saying what the annotator meant: reward and DPO training would read them as real wins,
    so they are for analysis, not for recipes. Pairs with identical or empty texts are never rows."""
    if majority:
        return _majority_rows(judgments)
    rows = []
    for j in judgments:
        decisive = j["choice"] in ("A", "B")
        if not decisive and not keep_ties:
            continue
        if not _trainable_pair(j["text_a"], j["text_b"]):
            continue
        b_won = j["choice"] == "B"
        rows.append({
            "prompt": j["prompt"],
            "chosen": [{"role": "assistant", "content": j["text_b"] if b_won else j["text_a"]}],
            "rejected": [{"role": "assistant", "content": j["text_a"] if b_won else j["text_b"]}],
            "choice": j["choice"],
            "item_id": j["item_id"],
            "annotator": j["annotator"],
            "model_chosen": j["model_b"] if b_won else j["model_a"],
            "model_rejected": j["model_a"] if b_won else j["model_b"],
            "reason": j["reason"],
            "judgment_id": j["judgment_id"],
        })
    return rows


def _trainable_pair(first: str, second: str) -> bool:
    """Two models can write the same answer, or none at all: a choice there teaches no preference."""
    return bool(first.strip()) and bool(second.strip()) and first.strip() != second.strip()


def _majority_rows(judgments: list[dict]) -> list[dict]:
    by_item: dict[str, list[dict]] = {}
    for j in judgments:
        by_item.setdefault(j["item_id"], []).append(j)
    rows = []
    for item_id, group in by_item.items():
        votes = {1: 0, 2: 0}
        texts, models = {}, {}
        for j in group:
            b_response = 3 - j["a_response"]
            texts[j["a_response"]], texts[b_response] = j["text_a"], j["text_b"]
            models[j["a_response"]], models[b_response] = j["model_a"], j["model_b"]
            if j["choice"] in ("A", "B"):
                votes[j["a_response"] if j["choice"] == "A" else b_response] += 1
        if votes[1] == votes[2] or not _trainable_pair(texts[1], texts[2]):
            continue
        winner = 1 if votes[1] > votes[2] else 2
        rows.append({
            "prompt": group[0]["prompt"],
            "chosen": [{"role": "assistant", "content": texts[winner]}],
            "rejected": [{"role": "assistant", "content": texts[3 - winner]}],
            "choice": "majority",
            "item_id": item_id,
            "votes": f"{votes[winner]}-{votes[3 - winner]} of {len(group)}",
            "model_chosen": models[winner],
            "model_rejected": models[3 - winner],
        })
    return rows


def winner_rows(judgments: list[dict]) -> list[dict]:
    """Best-of-n distillation (rejection-sampling fine-tuning): for each prompt, the answer with the most wins net of
    losses over its judgments, as an SFT row. An A/B choice is a win and a loss; "both bad" is a loss for both (an
    answer called bad is no demonstration); a tie counts for neither. A prompt whose best answer did not win more
    than it lost gives none; ties for best go to the answer judged first. Answers are told apart by their text
    without surrounding whitespace."""
    scores: dict[str, dict[str, list[int]]] = {}
    prompts = {}
    for j in judgments:
        texts = (j["text_a"] or "").strip(), (j["text_b"] or "").strip()
        if j["choice"] not in ("A", "B", "both_bad") or not all(texts):
            continue
        key = json.dumps(j["prompt"], sort_keys=True)
        prompts[key] = j["prompt"]
        answers = scores.setdefault(key, {})
        for side, text in zip("AB", texts):
            won = j["choice"] == side
            wins, losses = answers.setdefault(text, [0, 0])
            answers[text] = [wins + won, losses + (not won)]
    rows = []
    for key, answers in scores.items():
        text, (wins, losses) = max(answers.items(), key=lambda answer: answer[1][0] - answer[1][1])
        if wins > losses:
            rows.append({"messages": prompts[key] + [{"role": "assistant", "content": text}], "wins": wins,
                         "losses": losses, "answers_compared": len(answers)})
    return rows


def feedback_training_rows(replies: list[dict], kind: str) -> list[dict]:
    """What chat feedback teaches each kind of stage: a correction is a demonstration, and with the reply it
    corrects a preference pair (correction over reply); a rating is unpaired feedback for KTO, and a correction
    is an answer people wanted."""
    rows = []
    for r in replies:
        common = {"prompt": r["conversation"], "annotator": r["annotator"], "model": r["model"],
                  "reply_id": r["reply_id"]}
        answer = [{"role": "assistant", "content": r["reply"]}]
        wanted = [{"role": "assistant", "content": r["correction"]}] if r["correction"] else None
        if kind == "demonstrations" and wanted:
            rows.append({**common, "completion": wanted})
        elif kind == "preferences" and wanted and _trainable_pair(r["correction"], r["reply"]):
            rows.append({**common, "chosen": wanted, "rejected": answer, "choice": "correction"})
        elif kind == "feedback":
            if r["rating"] is not None and r["reply"].strip():
                rows.append({**common, "completion": answer, "label": r["rating"] == 1})
            if wanted:
                rows.append({**common, "completion": wanted, "label": True})
    return rows


def read_label_rows(path: str | Path, kind: str = "preferences", majority: bool = False) -> list[dict]:
    """Training rows of `kind` straight from a label database: preferences are every A/B judgment (ties and
    both-bad say neither is better; with `majority`, one row per pair for the reply more of its annotators chose)
    and every correction over the reply it corrects; demonstrations are the corrections; feedback is the rated
    replies and the corrections."""
    store = LabelStore(path, create=False)
    try:
        judged = preference_rows(store.judgments(), majority=majority) if kind == "preferences" else []
        return judged + feedback_training_rows(store.replies(), kind)
    finally:
        store.close()
