"""The labelling server under attack, as a real process over HTTP: requests without a login are refused, no file
parameter reaches a file outside what the app serves (the label database above all), and oversized input is
refused without being stored. (Script/HTML injection is checked in a real browser in test_ui_browser.py.)

    python -m pytest tests/test_ui_attacks.py
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from align.labelling.store import MAX_REASON_CHARS, LabelStore  # noqa: E402
from align.ui.label_process import USERS, LabelServer  # noqa: E402

pytestmark = pytest.mark.fault("attack")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    with LabelServer(["--pairs", "bundled:prefs_test", "--db", str(root / "labels.db")], root / "log") as running:
        running.db = root / "labels.db"
        yield running


def request(server, path: str, data: bytes | None = None, opener=None, headers: dict | None = None):
    """(status, body) of one request; the path is sent as written (no normalisation of ../)."""
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def logged_in(server, name: str = "alice"):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": name, "password": USERS[name]}).encode()
    status, _ = request(server, "/login", form, opener)
    assert status == 200
    return opener


def cookies(opener) -> list:
    (handler,) = [h for h in opener.handlers if isinstance(h, urllib.request.HTTPCookieProcessor)]
    return list(handler.cookiejar)


JSON = {"Content-Type": "application/json"}
UNAUTHENTICATED = [
    ("GET", "/config", None),
    ("GET", "/gradio_api/info", None),
    ("GET", "/gradio_api/queue/status", None),
    ("GET", "/gradio_api/file=/etc/passwd", None),
    ("POST", "/gradio_api/call/next_pair", {"data": []}),
    ("POST", "/gradio_api/call/submit_label", {"data": ["x", "A", ""]}),
    ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": 0, "session_hash": "attacker"}),
    ("POST", "/gradio_api/run/predict", {"data": []}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNAUTHENTICATED, ids=[f"{m} {p}" for m, p, _ in UNAUTHENTICATED])
def test_requests_without_a_login_are_refused(server, method, path, body):
    data = json.dumps(body).encode() if method == "POST" else None
    status, text = request(server, path, data, headers=JSON)
    assert status == 401, f"{method} {path} answered {status}"
    assert b"SQLite" not in text and b"root:" not in text and b"item_id" not in text
    assert LabelStore(server.db, create=False).counts()["judgments"] == 0


def traversals(db) -> list[str]:
    return [
        f"/gradio_api/file={db}",  # the label database itself, by absolute path
        "/gradio_api/file=labels.db",
        f"/gradio_api/file={urllib.parse.quote(str(db), safe='')}",
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=../../../../etc/passwd",
        "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/gradio_api/file=....//....//....//etc/passwd",
        "/gradio_api/file=pyproject.toml",
        "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/assets/..%2f..%2f..%2f..%2fetc/passwd",
        "/gradio_api/static/../../../../etc/passwd",
        "/favicon.ico/../../../../etc/passwd",
    ]


def test_no_file_parameter_reaches_the_database_or_the_disk_even_logged_in(server):
    opener = logged_in(server)
    for path in traversals(server.db):
        status, text = request(server, path, opener=opener)
        assert status in (400, 403, 404), f"{path} answered {status}"
        assert not text.startswith(b"SQLite format 3") and b"root:" not in text and b"[project]" not in text, path


def test_oversized_input_is_refused_and_nothing_is_stored(server):
    opener = logged_in(server)
    # A 5 MB upload and a 5 MB judgment: refused from the declared length, before the body is read.
    for path, kind in (("/gradio_api/upload", "multipart/form-data; boundary=x"),
                       ("/gradio_api/call/submit_label", "application/json")):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", kind)
        connection.putheader("Content-Length", str(5 * 1024 * 1024))
        connection.putheader("Cookie", "; ".join(f"{c.name}={c.value}" for c in cookies(opener)))
        connection.endheaders()
        assert connection.getresponse().status == 413, path
        connection.close()
    # A chunked body (no declared length) is counted as it arrives and refused once it passes the limit.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", "/gradio_api/call/submit_label", (b"y" * 65536 for _ in range(80)),
                           {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                            "Cookie": "; ".join(f"{c.name}={c.value}" for c in cookies(opener))},
                           encode_chunked=True)
        assert connection.getresponse().status == 413
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed while the rest was still being sent: refused all the same
    connection.close()
    # Sent in full, a body over the limit gets 413 or has its connection closed while it is still being sent.
    try:
        status, _ = request(server, "/gradio_api/call/submit_label",
                            json.dumps({"data": ["x", "A", "y" * 5_000_000]}).encode(), opener, JSON)
    except urllib.error.URLError as err:
        assert isinstance(err.reason, (ConnectionResetError, BrokenPipeError)), err
    else:
        assert status == 413

    alice = Client(server.url, auth=("alice", USERS["alice"]), verbose=False)
    pair = alice.predict(api_name="/next_pair")
    with pytest.raises(Exception, match=f"at most {MAX_REASON_CHARS}"):
        alice.predict(item_id=pair["item_id"], choice="A", reason="r" * (MAX_REASON_CHARS + 1),
                      api_name="/submit_label")
    with pytest.raises(Exception, match="item id must be a string of at most"):
        alice.predict(item_id="i" * 10_000, choice="A", reason="", api_name="/submit_label")
    with pytest.raises(Exception, match="not one of"):
        alice.predict(item_id=pair["item_id"], choice="A" * 10_000, reason="", api_name="/submit_label")
    assert LabelStore(server.db, create=False).counts()["judgments"] == 0

    # The server is unharmed: the same annotator labels the same pair normally.
    ack = alice.predict(item_id=pair["item_id"], choice="B", reason="r" * MAX_REASON_CHARS, api_name="/submit_label")
    (row,) = LabelStore(server.db, create=False).judgments()
    assert row["judgment_id"] == ack["judgment_id"] and len(row["reason"]) == MAX_REASON_CHARS


@pytest.mark.slow
@pytest.mark.fault("attack")
def test_200_rapid_wrong_guesses_reach_the_password_check_at_most_the_configured_number_of_times(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "response_a": "a", "response_b": "b"}) + "\n")
    log = tmp_path / "server.log"
    args = ["--pairs", str(pairs), "--db", str(tmp_path / "labels.db"), "--login-max-failures", "5",
            "--login-lock-minutes", "0.25", "--login-delay-seconds", "0.05"]

    def attempt(name: str, password: str) -> tuple[int, bytes]:
        return request(server, "/login", urllib.parse.urlencode({"username": name, "password": password}).encode())

    with LabelServer(args, log) as server:
        started = time.time()
        answers = [attempt("alice", f"guess-{i}") for i in range(200)]
        while time.time() - started < 1.5:  # past the growing delays (0.05 + 0.1 + 0.2 + 0.4 s): locked by now
            answers.append(attempt("alice", "one-more-guess"))
        assert {status for status, _ in answers} == {400}  # refused and wrong look the same
        unknown = attempt("nobody-by-this-name", "guess")
        assert unknown == answers[0], "an unknown account is answered exactly as a known one"
        assert attempt("alice", USERS["alice"])[0] == 400, "the right password is refused while locked"
        time.sleep(max(0.0, started + 17 - time.time()))  # the 15 s lock passes
        assert attempt("alice", USERS["alice"])[0] == 200
        assert attempt("bob", USERS["bob"])[0] == 200  # the address was not locked by one account's guesses
    lines = log.read_text().splitlines()
    checked = [line for line in lines if "login failed: account 'alice'" in line]
    refused = [line for line in lines if "login refused without checking: account 'alice'" in line]
    assert len(checked) == 5, len(checked)  # the configured number, then refusals without a password check
    assert len(checked) + len(refused) >= len(answers) and all("from 127.0.0.1" in line for line in refused)
