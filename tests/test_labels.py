"""The label store (SQLite), pair sources, accounts, export and the recipe's `labels:` dataset, without a browser."""

from __future__ import annotations

import json
import random
import sqlite3
import threading

import pytest

from align.labelling.accounts import AccountError, add_account, load_accounts, parse_accounts, password_matches
from align.cli import main
from align.config import DataSource
from align.data import DataError, load_demonstrations, load_preferences
from align.labelling.sources import pair_items, prompt_items
from align.labelling.store import LabelError, LabelStore, preference_rows


def pairs(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"question {i}"}], "response_1": f"good {i}",
             "response_2": f"bad {i}"} for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = LabelStore(tmp_path / "labels.db")
    s.add_items(pairs(6), "test")
    return s


def test_database_is_wal_and_import_is_idempotent(store, tmp_path):
    mode = sqlite3.connect(tmp_path / "labels.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.add_items(pairs(6), "again") == 0  # same content, same ids
    assert store.counts()["items"] == 6
    clash = pairs(1)
    clash[0].update(id=store.next_assignment("x")["item_id"], response_1="something else")
    with pytest.raises(LabelError, match="already in .* with a different"):
        store.add_items(clash, "clash.jsonl")


def test_each_annotator_gets_an_item_once_and_overlap_caps_annotators(store):
    seen = {}
    for annotator in ("a", "b", "c"):
        seen[annotator] = []
        while (shown := store.next_assignment(annotator, overlap=2)) is not None:
            seen[annotator].append(shown["item_id"])
            store.submit(annotator, shown["item_id"], "A")
    for items in seen.values():
        assert len(items) == len(set(items))  # never the same pair twice
    per_item = {}
    for j in store.judgments():
        per_item[j["item_id"]] = per_item.get(j["item_id"], 0) + 1
    assert sorted(per_item.values()) == [2] * 6  # exactly overlap annotators per pair
    # Partly covered items go first: b completes a's items before c gets anything.
    assert seen["b"] == seen["a"] and len(seen["c"]) == 0


def test_ab_order_is_random_recorded_and_the_exact_texts_are_stored(store):
    rng = random.Random(3)
    orders = []
    for annotator in [f"u{i}" for i in range(12)]:
        shown = store.next_assignment(annotator, overlap=12, rng=rng)
        orders.append(shown["a_response"])
        choice = "A" if shown["a_response"] == 1 else "B"  # always prefer response 1, wherever it sits
        store.submit(annotator, shown["item_id"], choice, reason=" clearer ")
        j = store.judgments()[-1]
        assert (j["text_a"], j["text_b"]) == ((shown["text_a"], shown["text_b"]))
        assert j["a_response"] == shown["a_response"] and j["reason"] == "clearer"
        assert j["shown_at"] <= j["submitted_at"]
    assert set(orders) == {1, 2}
    rows = preference_rows(store.judgments())
    assert all(r["chosen"][0]["content"].startswith("good") for r in rows)  # mapping undone correctly


def test_reload_shows_the_same_pair_and_retries_do_not_duplicate(store):
    first = store.next_assignment("a")
    again = store.next_assignment("a")
    assert (again["item_id"], again["a_response"]) == (first["item_id"], first["a_response"])
    jid = store.submit("a", first["item_id"], "B")
    assert store.submit("a", first["item_id"], "B") == jid  # a retried request after a lost reply
    with pytest.raises(LabelError, match="already judged 'B'.*undo"):
        store.submit("a", first["item_id"], "A")
    with pytest.raises(LabelError, match="not given to b"):
        store.submit("b", first["item_id"], "A")
    with pytest.raises(LabelError, match="not one of"):
        store.submit("a", first["item_id"], "C")
    assert len(store.judgments()) == 1


def test_undo_keeps_the_row_and_hands_the_pair_back(store):
    first = store.next_assignment("a")
    store.submit("a", first["item_id"], "A")
    second = store.next_assignment("a")
    undone = store.undo_last("a")
    assert undone["item_id"] == first["item_id"] and undone["choice"] == "A"
    back = store.next_assignment("a")
    assert (back["item_id"], back["a_response"]) == (first["item_id"], first["a_response"])
    store.submit("a", first["item_id"], "tie")
    assert store.next_assignment("a")["item_id"] == second["item_id"]  # then the pair that was on screen
    everything = store.judgments(include_undone=True)
    assert [j["choice"] for j in everything] == ["A", "tie"] and everything[0]["undone_at"] is not None
    assert [j["choice"] for j in store.judgments()] == ["tie"]
    assert store.progress("a")["done"] == 1
    with pytest.raises(LabelError, match="no judgment to undo"):
        store.undo_last("nobody")


def test_an_abandoned_pair_goes_to_someone_else_after_the_lease(store):
    held = store.next_assignment("a", overlap=1)
    other = store.next_assignment("b", overlap=1, lease_seconds=3600)
    assert other["item_id"] != held["item_id"]
    store.submit("b", other["item_id"], "A")
    late = store.next_assignment("b", overlap=1, lease_seconds=0)
    assert late["item_id"] == held["item_id"]
    # a comes back too late: the pair is b's now, so overlap 1 still means one judgment.
    with pytest.raises(LabelError, match="given to someone else"):
        store.submit("a", held["item_id"], "A")
    store.submit("b", held["item_id"], "B")
    assert store.next_assignment("a", overlap=1)["item_id"] not in (held["item_id"], other["item_id"])
    assert [j["annotator"] for j in store.judgments() if j["item_id"] == held["item_id"]] == ["b"]


def test_unwritten_pairs_wait_for_a_model_and_failures_move_on(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items([{"prompt": [{"role": "user", "content": "q"}], "model_1": "m", "model_2": "m"}], "prompts")
    store.add_items(pairs(1), "pairs")
    assert {store.next_assignment("a", generated_only=True)["text_a"]} < {"good 0", "bad 0"}  # no model here
    store.submit("a", store.next_assignment("a")["item_id"], "A")
    unwritten = store.next_assignment("a")
    assert unwritten["text_a"] is None
    with pytest.raises(LabelError, match="no responses yet"):
        store.submit("a", unwritten["item_id"], "A")
    store.release("a", unwritten["item_id"])  # generation failed: the annotator is not stuck on it
    assert store.next_assignment("a") is None


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path):
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (a, b, c)")
    db.commit()
    db.close()
    with pytest.raises(LabelError, match="not a label database"):
        LabelStore(other)
    tables = {r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta"}
    (tmp_path / "text.db").write_text("not sqlite at all, just text " * 10)
    with pytest.raises(LabelError, match="not a label database"):
        LabelStore(tmp_path / "text.db", create=False)


def test_parallel_annotators_never_collide(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(pairs(30), "test")
    errors = []

    def work(name):
        try:
            mine = LabelStore(tmp_path / "labels.db")  # its own connections, like a second server process
            while (shown := mine.next_assignment(name, overlap=3)) is not None:
                mine.submit(name, shown["item_id"], random.choice(["A", "B", "tie", "both_bad"]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(f"u{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    judgments = store.judgments()
    assert len(judgments) == 90
    keys = [(j["item_id"], j["annotator"]) for j in judgments]
    assert len(keys) == len(set(keys))
    per_item = {}
    for item, _ in keys:
        per_item[item] = per_item.get(item, 0) + 1
    assert set(per_item.values()) == {3}


def test_assignments_in_batches_give_the_pairs_and_ab_orders_one_by_one_asking_gives(tmp_path):
    def label(use_batches: bool, path) -> list[tuple]:
        store = LabelStore(path)
        store.add_items(pairs(40), "test")
        store.add_items(pairs(45)[40:], "other")
        rng = random.Random(5)
        for _ in range(5):  # a person judged five pairs first: those go first, whichever batch they fall in
            store.submit("person", store.next_assignment("person", 2, rng=rng, source="test")["item_id"], "A")
        for _ in range(3):  # and skipped some, so the queue's order is not who judged it
            store.release("person", store.next_assignment("person", 2, rng=rng, source="test")["item_id"])
        for annotator in ("a", "b", "c"):
            if use_batches:
                shown_pairs = store.assignments(annotator, overlap=2, rng=rng, source="test", batch=7)
            else:
                shown_pairs = iter(lambda: store.next_assignment(annotator, overlap=2, rng=rng, source="test"), None)
            for shown in shown_pairs:
                store.submit(annotator, shown["item_id"], rng.choice(["A", "B", "tie"]))
        return [(j["annotator"], j["item_id"], j["a_response"], j["choice"]) for j in store.judgments()]

    one_by_one = label(False, tmp_path / "one.db")
    assert label(True, tmp_path / "batched.db") == one_by_one
    assert len(one_by_one) == 80  # each of the source's 40 pairs twice, none of the other source's
    first_five = {item for name, item, _, _ in one_by_one[:5]}
    assert [name for name, item, _, _ in one_by_one if item in first_five] == ["person"] * 5 + ["a"] * 5
    assert [name for name, _, _, _ in one_by_one[5:10]] == ["a"] * 5  # a completes the person's pairs first


def test_assignments_skip_a_pair_someone_else_took_after_the_batch_was_read(store):
    batched = store.assignments("a", overlap=1, batch=6)
    first = next(batched)
    store.submit("a", first["item_id"], "A")
    taken = store.next_assignment("b", overlap=1)  # b takes the pair a's batch would give next
    rest = []
    for shown in batched:
        store.submit("a", shown["item_id"], "B")
        rest.append(shown["item_id"])
    assert taken["item_id"] not in rest and len(rest) == 4
    assert store.assignment("a", taken["item_id"]) is None


def test_assignments_start_with_the_pairs_still_open(store):
    for _ in range(3):
        store.submit("a", store.next_assignment("a")["item_id"], "A")
    undone = [store.undo_last("a")["item_id"], store.undo_last("a")["item_id"]]  # two pairs handed back
    given = []
    for shown in store.assignments("a"):
        store.submit("a", shown["item_id"], "A")
        given.append(shown["item_id"])
    assert given[:2] == undone[::-1] and len(given) == len(set(given)) == 5  # newest first, then the three new
    left_open = store.next_assignment("b", overlap=2)
    shown = [item["item_id"] for item in store.assignments("b", overlap=2)]  # judging none of them
    assert shown[0] == left_open["item_id"] and len(shown) == len(set(shown)) == 6  # each once, no endless loop


def test_assignments_start_with_the_pair_still_on_screen(store):
    on_screen = store.next_assignment("a")
    given = []
    for shown in store.assignments("a"):
        store.submit("a", shown["item_id"], "A")
        given.append(shown["item_id"])
    assert given[0] == on_screen["item_id"] and len(given) == len(set(given)) == 6


def test_preference_rows_ties_and_majority(store):
    item = store.next_assignment("a")["item_id"]
    for annotator, prefer_1 in (("a", True), ("b", True), ("c", False)):
        shown = store.next_assignment(annotator, overlap=3)
        assert shown["item_id"] == item
        store.submit(annotator, item, "A" if (shown["a_response"] == 1) == prefer_1 else "B")
    shown = store.next_assignment("d", overlap=4)
    store.submit("d", shown["item_id"], "tie")
    judgments = store.judgments()
    assert len(preference_rows(judgments)) == 3
    with_ties = preference_rows(judgments, keep_ties=True)
    assert [r["choice"] for r in with_ties].count("tie") == 1
    (majority,) = preference_rows(judgments, majority=True)
    assert majority["chosen"][0]["content"] == "good 0" and majority["votes"] == "2-1 of 4"
    # Two models may write the same text: a choice between equal answers is no training pair.
    same = [{**judgments[0], "text_b": judgments[0]["text_a"] + " "}]
    assert preference_rows(same) == [] and preference_rows(same, majority=True) == []
    blank = [{**judgments[0], "text_b": "  "}]
    assert preference_rows(blank) == [] and preference_rows(blank, majority=True) == []


def test_pair_sources_and_their_errors(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": 7, "prompt": "Hi", "response_a": "Hello", "response_b": "Yo", "model_a": "m1", "model_b": "m2",
         "topic": "greeting"},
        {"messages": [{"role": "user", "content": "2+2?"}], "response_1": "4", "response_2": "5"},
        {"prompt": "x", "chosen": "yes", "rejected": "no"},
    ]) + "\n")
    items = pair_items(str(path))
    assert items[0]["id"] == "7" and items[0]["model_1"] == "m1" and items[0]["extra"] == {"topic": "greeting"}
    assert items[1]["prompt"] == [{"role": "user", "content": "2+2?"}] and items[1]["response_2"] == "5"
    assert (items[2]["response_1"], items[2]["response_2"]) == ("yes", "no")
    path.write_text(json.dumps({"prompt": "Hi", "answer": "x"}) + "\n" + json.dumps({"prompt": "Hi", "response_a": "x"}))
    with pytest.raises(DataError, match=r"(?s)row 1: missing responses.*row 2: missing field 'response_b'"):
        pair_items(str(path))
    generated = prompt_items("bundled:prefs_test", ["runs/x/sft", "runs/x/dpo"])
    assert generated[0]["model_1"] == "runs/x/sft" and "response_1" not in generated[0]
    assert len(prompt_items("bundled:prefs_test", ["embedded"])[0]["prompt"]) == 1


def test_accounts_file_env_and_hashes(tmp_path, monkeypatch):
    users = tmp_path / "users.txt"
    add_account(str(users), "alice", "correct horse", admin=True)
    users.write_text(users.read_text() + "# comment\n\nbob:plain-pw\n")
    monkeypatch.setenv("ALIGN_LABEL_USERS", "carol:pw3")
    accounts = load_accounts(str(users))
    assert accounts["alice"]["admin"] and not accounts["bob"]["admin"]
    assert accounts["alice"]["password"].startswith("pbkdf2_sha256$")
    assert password_matches(accounts["alice"]["password"], "correct horse")
    assert not password_matches(accounts["alice"]["password"], "wrong")
    assert password_matches(accounts["bob"]["password"], "plain-pw") and "carol" in accounts
    with pytest.raises(AccountError, match="already exists"):
        add_account(str(users), "alice", "another password")
    with pytest.raises(AccountError, match="line 2: expected name:password"):
        parse_accounts(["ok:pw", "broken"], "users.txt")
    with pytest.raises(AccountError, match="line 1: password hash of 'a' is damaged"):
        parse_accounts(["a:pbkdf2_sha256$x"], "users.txt")
    with pytest.raises(AccountError, match="listed twice"):
        parse_accounts(["a:1", "a:2"], "users.txt")
    monkeypatch.setenv("ALIGN_LABEL_USERS", "bob:x")
    with pytest.raises(AccountError, match="also in"):
        load_accounts(str(users))


def test_recipe_reads_labels_and_cli_exports_them(store, tmp_path, capsys):
    for annotator in ("a", "b"):  # a always prefers response 1 (wherever it is shown); b calls every pair a tie
        while (shown := store.next_assignment(annotator, overlap=2)) is not None:
            decisive = "A" if shown["a_response"] == 1 else "B"
            store.submit(annotator, shown["item_id"], decisive if annotator == "a" else "tie")
    db = str(tmp_path / "labels.db")
    rows, where = load_preferences(DataSource.model_validate(f"labels:{db}"))
    assert where == f"labels:{db}" and len(rows) == 6  # a's 6 decisive judgments; b's ties are not pairs
    assert all(r["chosen"][0]["content"].startswith("good") for r in rows)

    assert main(["labels", "export", db, str(tmp_path / "out.jsonl"), "--keep-ties"]) == 0
    exported = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(exported) == 12 and sum(r["choice"] == "tie" for r in exported) == 6
    assert main(["labels", "export", db, str(tmp_path / "hf"), "--format", "hf"]) == 0
    import datasets

    assert len(datasets.load_from_disk(str(tmp_path / "hf"))) == 6
    capsys.readouterr()
    assert main(["labels", "stats", db, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["judgments"] == 12 and report["items_with_overlap"] == 6
    assert report["tie_rate"] == 0.5
    assert main(["labels", "stats", db]) == 0
    assert "Fleiss" in capsys.readouterr().out
    assert main(["labels", "stats", str(tmp_path / "missing.db")]) == 2

    # SFT reads a label database's corrections; judgments alone are not demonstrations
    with pytest.raises(DataError, match="no corrected replies yet"):
        load_demonstrations(DataSource.model_validate({"labels": db}))
    empty = LabelStore(tmp_path / "empty.db")
    empty.add_items(pairs(1), "t")
    with pytest.raises(DataError, match="no A/B judgments or corrections yet"):
        load_preferences(DataSource.model_validate({"labels": str(tmp_path / "empty.db")}))
    with pytest.raises(DataError, match="write labels:"):
        load_preferences(DataSource.model_validate(db))


def test_chat_replies_ratings_and_corrections_are_stored_once_and_feed_each_stage(tmp_path, capsys):
    from align.labelling.stats import feedback_report
    from align.labelling.store import read_label_rows

    db = tmp_path / "feedback.db"
    store = LabelStore(db)
    hello = [{"role": "user", "content": "Capital of France?"}]
    settings = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 1}
    assert store.add_reply("r1", "alice", "model-a", hello, "Lyon.", settings)
    assert not store.add_reply("r1", "alice", "model-a", hello, "Lyon.", settings), "a retry adds nothing"
    with pytest.raises(LabelError, match="already stored with other content"):
        store.add_reply("r1", "alice", "model-a", hello, "Paris.", settings)
    store.add_reply("r2", "bob", "model-b", hello, "Paris.", settings)
    store.rate_reply("r1", "alice", -1)
    store.correct_reply("r1", "alice", "Paris.")
    store.rate_reply("r2", "bob", 1)
    with pytest.raises(LabelError, match="no reply r2 of yours"):
        store.rate_reply("r2", "alice", -1)
    with pytest.raises(LabelError, match="unchanged"):
        store.correct_reply("r2", "bob", " Paris. ")
    with pytest.raises(LabelError, match="rating must be"):
        store.rate_reply("r2", "bob", 5)
    [first, second] = store.replies()
    assert (first["rating"], first["correction"], first["settings"]) == (-1, "Paris.", settings)
    assert first["conversation"] == hello and second["annotator"] == "bob"
    store.close()

    demos = read_label_rows(db, "demonstrations")
    assert [d["completion"][0]["content"] for d in demos] == ["Paris."]
    [pair] = read_label_rows(db, "preferences")
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("Paris.", "Lyon.")
    feedback = read_label_rows(db, "feedback")
    assert sorted((f["completion"][0]["content"], f["label"]) for f in feedback) == [
        ("Lyon.", False), ("Paris.", True), ("Paris.", True)]

    report = feedback_report(LabelStore(db).replies())
    assert (report["replies"], report["rated"], report["up"], report["corrected"]) == (2, 2, 1, 1)
    assert report["per_model"]["model-a"]["up_rate"] == 0.0 and report["per_annotator"]["bob"]["up_rate"] == 1.0
    assert main(["labels", "stats", str(db)]) == 0
    out = capsys.readouterr().out
    assert "2 chat replies (2 rated, 1 corrected)" in out and "## Chat feedback" in out and "| model-b | 1 |" in out


@pytest.mark.fault("attack")
def test_the_login_guard_delays_then_locks_an_account_and_a_shared_address():
    from align.labelling.accounts import LoginGuard, hash_password

    now = [1000.0]
    lines = []
    accounts = {"alice": {"password": hash_password("right", iterations=1000)},
                "bob": {"password": hash_password("pw", iterations=1000)}}
    guard = LoginGuard(accounts, max_failures=3, lock_seconds=60, first_delay=1, log=lines.append, clock=lambda: now[0])
    assert not guard.check("alice", "x", "1.2.3.4") and guard.checked == 1
    assert not guard.check("alice", "right", "1.2.3.4") and guard.checked == 1  # within the 1 s delay: no check
    now[0] += 1.1
    assert not guard.check("alice", "y", "1.2.3.4") and guard.checked == 2  # delay now 2 s
    now[0] += 2.1
    assert not guard.check("alice", "z", "1.2.3.4") and guard.checked == 3  # third failure: locked for 60 s
    now[0] += 30
    assert not guard.check("alice", "right", "5.6.7.8") and guard.checked == 3  # locked from any address
    assert guard.check("bob", "pw", "1.2.3.4")  # the address is not locked by one account
    now[0] += 31
    assert guard.check("alice", "right", "5.6.7.8") and guard.checked == 5
    assert any("refused without checking: account 'alice' from 5.6.7.8" in line for line in lines)
    # an address that fails on many names is locked after 3x the account limit
    for i in range(9):
        now[0] += 100
        guard.check(f"name{i}", "x", "9.9.9.9")
    now[0] += 1
    assert not guard.check("bob", "pw", "9.9.9.9")
    assert any("address '9.9.9.9' from 9.9.9.9 is throttled" in line for line in lines)


def test_chat_feedback_exports_in_the_layout_each_stage_reads_and_loads_back(tmp_path, capsys):
    from align.data import load_feedback
    from align.labelling.store import read_label_rows

    db = tmp_path / "feedback.db"
    store = LabelStore(db)
    settings = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 1}
    france = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    spain = [{"role": "user", "content": "Capital of Spain?"}, {"role": "assistant", "content": "Madrid."},
             {"role": "user", "content": "And of Italy?"}]
    store.add_reply("r1", "alice", "model-a", france, "Lyon.", settings)
    store.add_reply("r2", "bob", "model-a", spain, "Rome.", settings)
    store.add_reply("r3", "bob", "model-a", france, "Nice.", settings)  # neither rated nor corrected: not exported
    store.rate_reply("r1", "alice", -1)
    store.correct_reply("r1", "alice", "Paris.")
    store.rate_reply("r2", "bob", 1)
    store.close()

    loaders = {"ratings": (load_feedback, "feedback"), "corrections": (load_demonstrations, "demonstrations")}
    for kind, (load, row_kind) in loaders.items():
        out = tmp_path / f"{kind}.jsonl"
        assert main(["labels", "export", str(db), str(out), "--kind", kind]) == 0
        assert f"to {out}: a dataset for {'kto' if kind == 'ratings' else 'sft'}" in capsys.readouterr().out
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(r["model"] == "model-a" and r["reply_id"] in ("r1", "r2") for r in written)
        # the stage's own loader reads the file as it reads the database
        from_file, _ = load(DataSource(path=str(out)))
        from_db, _ = load(DataSource(labels=str(db)))
        assert from_file == from_db and len(from_file) == len(read_label_rows(db, row_kind))
    ratings, _ = load_feedback(DataSource(path=str(tmp_path / "ratings.jsonl")))
    assert sorted((r["completion"][0]["content"], r["label"]) for r in ratings) == [
        ("Lyon.", False), ("Paris.", True), ("Rome.", True)]
    [messages] = [json.loads(line)["messages"] for line in (tmp_path / "corrections.jsonl").read_text().splitlines()]
    assert messages == france + [{"role": "assistant", "content": "Paris."}]  # an SFT messages row

    assert main(["labels", "export", str(db), str(tmp_path / "hf"), "--kind", "ratings", "--format", "hf"]) == 0
    assert main(["labels", "export", str(db), str(tmp_path / "pairs.jsonl")]) == 2  # no A/B judgments: nothing
    assert "none usable as preference pairs); chat feedback goes out with --kind ratings" in capsys.readouterr().err
    assert main(["labels", "export", str(db), str(tmp_path / "x.jsonl"), "--kind", "ratings", "--majority"]) == 2
    assert "go with --kind pairs" in capsys.readouterr().err


def test_a_backup_never_replaces_an_existing_file_unless_forced(store, tmp_path, capsys):
    db, copy = str(tmp_path / "labels.db"), tmp_path / "backup.db"
    assert main(["labels", "backup", db, str(copy)]) == 0
    first = copy.read_bytes()
    shown = store.next_assignment("a")
    store.submit("a", shown["item_id"], "A")
    capsys.readouterr()
    assert main(["labels", "backup", db, str(copy)]) == 2
    refused = capsys.readouterr().err
    assert f"{copy}: already exists" in refused and "--force" in refused
    assert copy.read_bytes() == first  # the earlier backup is untouched
    assert main(["labels", "backup", db, str(copy), "--force"]) == 0
    assert len(LabelStore(copy, create=False).judgments()) == 1


def test_winners_export_each_prompt_s_best_judged_answer_for_sft(tmp_path, capsys):
    """Best-of-n distillation: every two of a prompt's three samples judged; the sample with the most wins net
    of losses goes out as a demonstration ("both bad" a loss for both), and a prompt whose best did not win more
    than it lost gives none."""
    db = tmp_path / "labels.db"
    store = LabelStore(db)
    ask = lambda q: [{"role": "user", "content": q}]
    answers = {"q1": ["best", "middle", "worst"], "q2": ["x", "y", "z"]}
    items = [{"id": f"{q}-{a}-{b}", "prompt": ask(q), "response_1": a, "response_2": b}
             for q, texts in answers.items() for i, a in enumerate(texts) for b in texts[i + 1:]]
    store.add_items(items, "samples")
    rank = {"best": 0, "middle": 1, "worst": 2}
    while (shown := store.next_assignment("labeller")) is not None:
        if shown["prompt"] == ask("q2"):  # q2: x beats y, but x and z are both bad: x won 1, lost 1, no winner
            texts = {shown["text_a"], shown["text_b"]}
            choice = ("A" if shown["text_a"] == "x" else "B") if texts == {"x", "y"} else \
                "both_bad" if texts == {"x", "z"} else "tie"
            store.submit("labeller", shown["item_id"], choice)
            continue
        a_wins = rank[shown["text_a"]] < rank[shown["text_b"]]
        store.submit("labeller", shown["item_id"], "A" if a_wins else "B")
    assert main(["labels", "export", str(db), str(tmp_path / "winners.jsonl"), "--kind", "winners"]) == 0
    assert "wrote 1 best answers per prompt" in capsys.readouterr().out
    (row,) = [json.loads(line) for line in (tmp_path / "winners.jsonl").read_text().splitlines()]
    assert row["messages"] == ask("q1") + [{"role": "assistant", "content": "best"}]
    assert (row["wins"], row["losses"], row["answers_compared"]) == (2, 0, 3)
    rows, _ = load_demonstrations(DataSource.model_validate(str(tmp_path / "winners.jsonl")))
    assert len(rows) == 1  # SFT reads it as it is
    assert main(["labels", "export", str(db), str(tmp_path / "w2.jsonl"), "--kind", "winners", "--majority"]) == 2
    assert "go with --kind pairs" in capsys.readouterr().err
