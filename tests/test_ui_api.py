"""The labelling server through its API (gradio_client), as real processes: logins, labelling, undo, and 50
annotators at once through a kill -9 and a restart."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from align.labelling.store import LabelStore  # noqa: E402
from align.ui.label_process import USERS, LabelServer, users_env  # noqa: E402


def client(server: LabelServer, name: str | None) -> Client:
    auth = (name, USERS.get(name, f"{name}-pw")) if name else None
    return Client(server.url, auth=auth, verbose=False)


def first_pairs(tmp_path, n: int) -> str:
    """The first n held-out pairs as a file: a fixed-size labelling job, whatever the bundled set's size."""
    from align.data import bundled_path

    path = tmp_path / f"pairs-{n}.jsonl"
    path.write_text("".join(bundled_path("prefs_test").read_text().splitlines(keepends=True)[:n]))
    return str(path)


@pytest.mark.fault("attack")
def test_login_labelling_and_undo_through_the_api(tmp_path):
    db = tmp_path / "labels.db"
    with LabelServer(["--pairs", first_pairs(tmp_path, 64), "--db", str(db), "--overlap", "2"], tmp_path / "log") as server:
        with pytest.raises(Exception):
            Client(server.url, auth=("admin", "wrong"), verbose=False)
        with pytest.raises(Exception):  # no anonymous writes unless --allow-anonymous
            client(server, None).predict(api_name="/next_pair")

        alice, bob = client(server, "alice"), client(server, "bob")
        pair = alice.predict(api_name="/next_pair")
        assert pair["progress"] == {"done": 0, "left": 64, "items": 64, "all_done": 0, "all_needed": 128}
        assert alice.predict(api_name="/next_pair")["item_id"] == pair["item_id"]  # reload: same pair
        with pytest.raises(Exception, match="not given to bob"):
            bob.predict(item_id=pair["item_id"], choice="A", reason="", api_name="/submit_label")
        ack = alice.predict(item_id=pair["item_id"], choice="B", reason="more accurate", api_name="/submit_label")
        with pytest.raises(Exception, match="not one of"):
            alice.predict(item_id=pair["item_id"], choice="maybe", reason="", api_name="/submit_label")
        after = alice.predict(api_name="/next_pair")
        assert after["item_id"] != pair["item_id"] and after["progress"]["done"] == 1
        assert bob.predict(api_name="/next_pair")["item_id"] == pair["item_id"]  # overlap 2: bob gets it too
        undone = alice.predict(api_name="/undo_label")
        assert undone["judgment_id"] == ack["judgment_id"]
        assert alice.predict(api_name="/next_pair")["item_id"] == pair["item_id"]

    rows = LabelStore(db).judgments(include_undone=True)
    assert "align label: " in (tmp_path / "log").read_text()
    (row,) = rows
    assert (row["annotator"], row["choice"], row["reason"]) == ("alice", "B", "more accurate")
    assert row["undone_at"] is not None
    assert row["text_a"] == pair["text_a"] and row["text_b"] == pair["text_b"]  # exactly what was shown


def test_anonymous_labelling_only_when_enabled(tmp_path):
    db = tmp_path / "labels.db"
    args = ["--pairs", "bundled:prefs_test", "--db", str(db), "--allow-anonymous"]
    with LabelServer(args, tmp_path / "log", users="") as server:
        first, second = client(server, None), client(server, None)
        for c in (first, second):
            pair = c.predict(api_name="/next_pair")
            c.predict(item_id=pair["item_id"], choice="A", reason="", api_name="/submit_label")
    names = {j["annotator"] for j in LabelStore(db).judgments()}
    assert len(names) == 2 and all(n.startswith("anonymous-") for n in names)


@pytest.mark.parametrize("args, users, message", [
    ([], "", "no annotator accounts"),
    (["--allow-anonymous"], None, "--allow-anonymous with accounts"),
    (["--prompts", "bundled:prefs_test", "--models", "no/such/model"], None, "no/such/model"),
    (["--prompts", "bundled:prefs_test", "--models", "embedded", "--temperature", "0"], None, "same answer twice"),
    (["--lease-minutes", "0"], None, "must be positive"),
])
def test_bad_serving_settings_are_refused_at_start(tmp_path, args, users, message):
    server = LabelServer(["--pairs", "bundled:prefs_test", "--db", str(tmp_path / "l.db"), *args], tmp_path / "log",
                         users=users)
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start(timeout=120)
    log = (tmp_path / "log").read_text()
    assert message in log and "Traceback" not in log


@pytest.mark.slow
@pytest.mark.fault("kill -9")
def test_fifty_annotators_kill_9_and_restart_lose_and_duplicate_nothing(tmp_path, record_property):
    db = tmp_path / "labels.db"
    names = [f"annotator{i:02d}" for i in range(50)]
    server = LabelServer(["--pairs", first_pairs(tmp_path, 64), "--db", str(db), "--overlap", "3"], tmp_path / "log",
                         users=users_env(names)).start()
    acked: list[tuple[str, str, int]] = []
    lock = threading.Lock()
    up = threading.Event()
    up.set()
    errors: list[str] = []

    def annotate(name: str) -> None:
        c = None
        deadline = time.time() + 400
        while time.time() < deadline:
            up.wait()
            try:
                c = c or client(server, name)
                pair = c.predict(api_name="/next_pair")
                if not pair.get("item_id"):
                    return
                choice = ["A", "B", "tie", "both_bad"][hash((name, pair["item_id"])) % 4]
                ack = c.predict(item_id=pair["item_id"], choice=choice, reason="", api_name="/submit_label")
                with lock:
                    acked.append((name, pair["item_id"], ack["judgment_id"]))
            except Exception:  # the server is down (killed): wait for it, then log in again
                c = None
                time.sleep(0.5)
        errors.append(f"{name} did not finish")

    threads = [threading.Thread(target=annotate, args=(n,)) for n in names]
    for t in threads:
        t.start()
    while len(acked) < 60:
        time.sleep(0.05)
    up.clear()
    server.kill9()  # mid-session, with requests in flight
    killed_at = len(acked)
    server.start()
    up.set()
    for t in threads:
        t.join()
    server.stop()

    assert not errors
    assert killed_at >= 60 and len(acked) > killed_at
    judgments = LabelStore(db).judgments(include_undone=True)
    by_id = {j["judgment_id"]: j for j in judgments}
    lost = [a for a in acked if (by_id.get(a[2], {}).get("annotator"), by_id.get(a[2], {}).get("item_id")) != a[:2]]
    keys = [(j["item_id"], j["annotator"]) for j in judgments]
    duplicated = len(keys) - len(set(keys))
    record_property("labels_acknowledged", len(acked))
    record_property("labels_lost", len(lost))
    record_property("labels_duplicated", duplicated)
    assert not lost, f"acknowledged but not stored as acknowledged: {lost}"
    assert duplicated == 0  # exactly once: no annotator judged a pair twice
    assert len(judgments) == 192  # 64 pairs x overlap 3, all done
    per_item = {}
    for item, _ in keys:
        per_item[item] = per_item.get(item, 0) + 1
    assert set(per_item.values()) == {3}


@pytest.mark.slow
@pytest.mark.fault("kill -9")
def test_chat_feedback_through_the_api_survives_kill_9_without_duplicates(tiny_llama, tmp_path, record_property):
    db = tmp_path / "labels.db"
    args = [str(tiny_llama), "--db", str(db), "--max-new-tokens", "6", "--temperature", "0.8"]
    hello = [{"role": "user", "content": "Name a colour."}]
    server = LabelServer(args, tmp_path / "log", command="feedback").start()
    try:
        alice, bob = client(server, "alice"), client(server, "bob")
        first = alice.predict(messages=hello, api_name="/chat_reply")
        second = alice.predict(messages=hello + [{"role": "assistant", "content": first["reply"]},
                                                 {"role": "user", "content": "Another?"}], api_name="/chat_reply")
        alice.predict(reply_id=first["reply_id"], rating=1, api_name="/rate_reply")
        alice.predict(reply_id=first["reply_id"], rating=1, api_name="/rate_reply")  # a retried request
        alice.predict(reply_id=second["reply_id"], correction="Blue.", api_name="/correct_reply")
        with pytest.raises(Exception, match="of yours"):  # bob cannot rate alice's reply
            bob.predict(reply_id=first["reply_id"], rating=-1, api_name="/rate_reply")
        with pytest.raises(Exception, match="must end with your message"):
            alice.predict(messages=hello + [{"role": "assistant", "content": "x"}], api_name="/chat_reply")
        server.kill9()  # everything acknowledged above is committed
        server = LabelServer(args, tmp_path / "log", command="feedback").start()
        alice = client(server, "alice")
        alice.predict(reply_id=second["reply_id"], rating=-1, api_name="/rate_reply")
        alice.predict(reply_id=first["reply_id"], rating=-1, api_name="/rate_reply")  # a change of mind
    finally:
        server.stop()
    store = LabelStore(db)
    replies, history = store.replies(), store.feedback_history(first["reply_id"])
    # acknowledged before the kill: two replies, a rating and a correction
    kept = len(replies) + (history[0]["rating"] == 1) + sum(r["correction"] is not None for r in replies)
    record_property("labels_acknowledged", 4)
    record_property("labels_lost", 4 - kept)
    assert [(r["reply_id"], r["rating"], r["correction"]) for r in replies] == [
        (first["reply_id"], -1, None), (second["reply_id"], -1, "Blue.")]
    assert replies[0]["reply"] == first["reply"] and replies[1]["conversation"][-1]["content"] == "Another?"
    # The re-rating replaced the rating and kept the first one, with its time; the retried rating added nothing.
    assert [h["rating"] for h in history] == [1, -1]
    assert history[0]["at"] < history[1]["at"] == replies[0]["rated_at"]
    # The name the server was given and the weights it resolved to (the same directory here, made absolute).
    assert {(r["model"], r["model_resolved"]) for r in replies} == {(str(tiny_llama), str(tiny_llama.resolve()))}
    log = (tmp_path / "log").read_text()
    assert "align feedback: " in log and "align label:" not in log


# The replies table as align wrote it before it recorded the resolved model and the history of ratings.
EARLIER_REPLIES_TABLE = """
CREATE TABLE replies (
    reply_id TEXT PRIMARY KEY, annotator TEXT NOT NULL, model TEXT NOT NULL, conversation TEXT NOT NULL,
    reply TEXT NOT NULL, settings TEXT NOT NULL, created_at REAL NOT NULL, rating INTEGER CHECK (rating IN (-1, 1)),
    rated_at REAL, correction TEXT, corrected_at REAL
);
"""


def test_a_database_from_an_earlier_align_keeps_its_feedback_and_serves_on(tiny_llama, tmp_path):
    import json
    import sqlite3

    from align.labelling.store import SCHEMA

    db = tmp_path / "labels.db"
    old = sqlite3.connect(db)
    old.executescript(EARLIER_REPLIES_TABLE + SCHEMA)  # the schema's other tables; its `replies` is skipped
    old.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    hello = json.dumps([{"role": "user", "content": "Hi"}])
    old.execute("INSERT INTO replies VALUES ('old', 'alice', 'embedded', ?, 'Hello.', '{}', 10.0, 1, 20.0, "
                "'Hello! How can I help?', 30.0)", (hello,))
    old.commit()
    before = old.execute("SELECT * FROM replies").fetchone()
    old.close()

    args = [str(tiny_llama), "--db", str(db), "--max-new-tokens", "4"]
    with LabelServer(args, tmp_path / "log", command="feedback") as server:
        alice = client(server, "alice")
        alice.predict(reply_id="old", rating=-1, api_name="/rate_reply")
        new = alice.predict(messages=[{"role": "user", "content": "Hi"}], api_name="/chat_reply")

    store = LabelStore(db)
    old_row, new_row = store.replies()
    assert tuple(old_row[k] for k in ("reply_id", "annotator", "model", "reply", "created_at", "correction",
                                      "corrected_at")) == tuple(before[i] for i in (0, 1, 2, 4, 6, 9, 10))
    assert old_row["rating"] == -1 and old_row["model_resolved"] is None  # not known for rows stored before
    assert new_row["reply_id"] == new["reply_id"] and new_row["model_resolved"] == str(tiny_llama.resolve())
    # What was stored before became the start of the history, once, however often the database is opened.
    LabelStore(db)
    assert [(h["kind"], h["rating"], h["correction"], h["at"]) for h in store.feedback_history("old")][:2] == [
        ("rating", 1, None, 20.0), ("correction", None, "Hello! How can I help?", 30.0)]
    assert [h["rating"] for h in store.feedback_history("old")][2:] == [-1]


@pytest.mark.slow
@pytest.mark.fault("backup under load")
def test_a_backup_taken_while_20_annotators_submit_holds_every_label_acknowledged_before_it(tmp_path,
                                                                                           record_property):
    from align.cli import main
    from align.labelling.store import check_database

    db, backup = tmp_path / "labels.db", tmp_path / "backups" / "labels-copy.db"
    names = [f"annotator{i:02d}" for i in range(20)]
    server = LabelServer(["--pairs", first_pairs(tmp_path, 64), "--db", str(db), "--overlap", "3"], tmp_path / "log",
                         users=users_env(names)).start()
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def annotate(name: str) -> None:
        c = client(server, name)
        while not stop.is_set():
            pair = c.predict(api_name="/next_pair")
            if not pair.get("item_id"):
                return
            ack = c.predict(item_id=pair["item_id"], choice="A", reason="", api_name="/submit_label")
            with lock:
                acked.append(ack["judgment_id"])

    threads = [threading.Thread(target=annotate, args=(n,)) for n in names]
    try:
        for t in threads:
            t.start()
        while len(acked) < 40:
            time.sleep(0.05)
        with lock:
            before = set(acked)  # every judgment acknowledged before the backup starts
        assert main(["labels", "backup", str(db), str(backup)]) == 0  # the annotators keep submitting meanwhile
        # a backup can finish between two acknowledgements: wait for the next one, which shows the annotators were
        # still at it (they only stop below), rather than requiring one inside the backup's few milliseconds
        deadline = time.time() + 30
        while len(acked) <= len(before) and time.time() < deadline:
            time.sleep(0.05)
        during = len(acked)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    copied = {j["judgment_id"] for j in LabelStore(backup).judgments()}
    record_property("labels_acknowledged", len(before))
    record_property("labels_lost", len(before - copied))
    assert before <= copied, f"{len(before - copied)} labels acknowledged before the backup are missing from it"
    assert during > len(before), "the annotators should have kept submitting around the backup"
    assert check_database(backup)["rows"]["judgments"] == len(copied)
    assert not list(backup.parent.glob(".*tmp*")), "no half-written backup is left"


@pytest.mark.fault("corrupt file")
def test_labels_check_finds_a_damaged_database(tmp_path, capsys):
    from align.cli import main

    db = tmp_path / "labels.db"
    store = LabelStore(db)
    store.add_items([{"prompt": [{"role": "user", "content": f"q{i}"}], "response_1": "a", "response_2": "b"}
                     for i in range(200)], "t")
    store.close()
    assert main(["labels", "check", str(db)]) == 0
    assert "integrity ok; assignments 0, feedback_history 0, items 200, judgments 0" in capsys.readouterr().out
    data = bytearray(db.read_bytes())
    data[4096 * 2: 4096 * 2 + 512] = b"\xff" * 512  # scribble over a page in the middle
    db.write_bytes(bytes(data))
    assert main(["labels", "check", str(db)]) == 2
    err = capsys.readouterr().err
    assert "integrity check failed" in err or "not a readable SQLite database" in err, err
