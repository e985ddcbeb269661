"""Start `align label` / `align arena` as a real server process and stop it (gently or kill -9): used by the UI
tests, the labelling load benchmark (bench/label_load.py) and the screenshot script; and where Chromium is."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's background connections are refused on a closed network; these flags keep it quiet and quick.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# Demo accounts for tests, benchmarks and screenshots
USERS = {"alice": "alice-pw", "bob": "bob-pw", "admin": "admin-pw"}


def log_in(page, server: LabelServer, name: str, password: str | None = None):
    """Log a Playwright page into the server's login form (the demo password of `name` unless given)."""
    page.goto(server.url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(USERS[name] if password is None else password)
    page.get_by_role("button", name="Login").click()
    return page


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def users_env(names: list[str] | None = None) -> str:
    """ALIGN_LABEL_USERS for the given annotators (default: alice, bob, admin); admin is an admin."""
    names = names or list(USERS)
    return ",".join(f"{n}:{USERS.get(n, n + '-pw')}{':admin' if n == 'admin' else ''}" for n in names)


class LabelServer:
    def __init__(self, args: list[str], log: Path, users: str | None = None, command: str = "label"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args, self.log, self.command = args, log, command
        self.env = {**os.environ, "ALIGN_LABEL_USERS": users if users is not None else users_env(),
                    "GRADIO_ANALYTICS_ENABLED": "False"}
        self.process = None

    def start(self, timeout: float = 180.0) -> LabelServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("a")
        self.process = subprocess.Popen([sys.executable, "-m", "align", self.command, *self.args, "--port",
                                         str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                return self
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"server did not answer in {timeout}s:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.3)

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
