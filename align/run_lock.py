"""One writer per run directory: `align run` and `align export` hold runs/<name>/.lock for their whole life.

The lock is an flock on that file, which the kernel releases when its holder dies, so a killed run never blocks
the next one; the file also names the holder (pid, host, start time), so a refused run can say who holds it and a
run that takes over a dead holder's directory says so. Under `accelerate launch` the main process takes the lock
and the other processes of the same launch join it; a process of another launch is refused like a second run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
JOIN_SECONDS = 120.0  # how long the other processes of a launch wait for their main process to take the lock


class RunLocked(RuntimeError):
    """Another `align run` is writing this run directory."""


def launch_id() -> str:
    """What the processes of one `accelerate launch` share, and another launch does not."""
    keys = ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    return ":".join(os.environ.get(k, "") for k in keys) if "MASTER_PORT" in os.environ else f"pid:{os.getpid()}"


def holder_text(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, since {started}, running `{info.get('command', '?')}`"


def read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


@contextmanager
def run_lock(root: Path, command: str = "align run"):
    """Hold the run directory's lock (main process), or join the main process's (other processes of a launch)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    if int(os.environ.get("RANK", "0")) != 0:
        yield from _join(path, root)
        return
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{root} is being written by another {holder_text(read_holder(path))}. Wait for it to "
                            f"finish or stop it; two runs in one directory would interleave checkpoints and "
                            f"logs") from None
        previous = read_holder(path)
        if previous.get("pid"):
            print(f"[run] {root}: taking over the lock of {holder_text(previous)}, which ended without releasing "
                  f"it (killed?)", flush=True)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": command, "launch": launch_id()}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # a clean exit leaves no holder behind
            handle.flush()
    finally:
        handle.close()  # releases the flock


def _join(path: Path, root: Path):
    deadline = time.time() + JOIN_SECONDS
    while True:
        holder = read_holder(path)
        if holder.get("launch") == launch_id():
            break
        if time.time() > deadline:
            raise RunLocked(f"{root}: the main process of this launch did not take the run lock in "
                            f"{JOIN_SECONDS:.0f}s" + (f"; it is held by {holder_text(holder)}" if holder else ""))
        time.sleep(0.2)
    yield
