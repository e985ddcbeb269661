"""Stages in child processes: each stage of `align run` runs in a process of its own, so that everything it
loaded (models, optimiser state, datasets, allocator arenas) goes back to the system when it ends. Children are
forked from the parent while that is safe, else from a fork server that imported the libraries once.

(Not the processes of `accelerate launch`: those are ranks, see align/stages/ppo/ranks.py and align/sharding.py.)
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback


class StageProcessDied(RuntimeError):
    """A stage's child process ended without a result: killed (out of memory, kill -9) or crashed in native code."""


def in_child_process(function, *args):
    """function(*args) in a child process: its return value, or its exception raised here. Everything the function
    loads (models, optimiser state, datasets, allocator arenas) goes back to the system when the child exits, which
    in-process cleanup cannot promise: the heap keeps its fragments. The child writes to the same terminal, and it
    dies with this process (kill -9 included). How children start: start_child_processes."""
    context = _child_context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(send, os.getpid(), function, args),
                            name=f"align-{function.__name__}")
    child.start()
    send.close()
    try:
        try:
            status, payload = receive.recv()
        except EOFError:
            child.join()
            raise StageProcessDied(_death_message(child.exitcode)) from None
        child.join()
    finally:
        if child.is_alive():  # we are leaving on an error of our own (Ctrl-C): take the child with us
            child.terminate()
            child.join()
        receive.close()
    if status == "error":
        raise _rebuild_chain(payload)
    return payload


_threads_when_forking_allowed: frozenset[str] | None = None  # set by allow_forking


def _threads() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: nothing to tell new threads by, so never fork
        return frozenset({"unknown"})


def allow_forking() -> None:
    """Let children be forked from this process, for one that will compute nothing itself (`align run` checks and
    waits): forked children start at once and share its libraries' pages, where a fork server holds a second copy
    of them (0.3-0.5 GiB). Forking stays allowed only while no thread has started in this process since this call
    (threads that end are fine): once torch computes, its OpenMP worker threads exist, which a forked child lacks
    and then hangs in its first parallel region. Call it first, before anything runs."""
    global _threads_when_forking_allowed
    import torch  # its import starts a thread of its own, which the set taken must include

    _threads_when_forking_allowed = _threads()


def _fork_is_safe() -> bool:
    torch = sys.modules.get("torch")
    return (sys.platform.startswith("linux")  # macOS system libraries are not fork-safe
            and _threads_when_forking_allowed is not None and _threads() <= _threads_when_forking_allowed
            and not (torch is not None and torch.cuda.is_initialized()))  # a forked child cannot use a started CUDA


def _child_context():
    import multiprocessing

    if _fork_is_safe():
        return multiprocessing.get_context("fork")
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def start_child_processes(preload: tuple[str, ...]) -> None:
    """Get ready to start children. Unless they can be forked from here (allow_forking), they come from a fork
    server: a fresh process that imports `preload` (module names; missing ones are skipped) once, started now so
    that its 7 s overlap what this process does next, and then forks a child per call in about 0.02 s, where a
    spawned child would re-import torch, transformers and trl for each call."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload(["align.library_noise", *preload])  # also if forking stops being safe
    if not _fork_is_safe():
        forkserver.ensure_running()


def stop_child_processes() -> None:
    """Stop the fork server and wait for it, so that what its children used is counted as this process's children's
    (`/usr/bin/time` reports it) and nothing outlives a run. The next start_child_processes starts a new one."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)  # there is no public way to stop it
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)  # no child of it runs now; it may still be importing if the run failed early
    server._stop()


def _die_with(caller: int) -> None:
    """Kill this process as soon as `caller` ends, however it ends (kill -9 included). The fork server in between
    does not do it: it stays up while any child it forked holds the pipe it watches."""
    try:
        handle = os.pidfd_open(caller)  # readable once the caller has exited (Linux 5.3+)
    except (AttributeError, OSError):
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])
        # A sandboxing kernel (gVisor) may offer pidfd_open yet report the handle readable while the caller lives:
        # trusting it would kill every stage at its start. Only a caller seen gone ends this process.
        while _is_alive(caller):
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="align-watch-caller").start()


def _is_alive(pid: int) -> bool:
    """pid runs (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _child_main(send, caller: int, function, args) -> None:
    _die_with(caller)
    try:
        result = ("ok", function(*args))
    except BaseException as err:  # noqa: BLE001 - every way out, Ctrl-C included, is reported to the caller
        result = ("error", _picklable_chain(err, traceback.format_exc()))
    send.send(result)
    send.close()


def _picklable_chain(err: BaseException, child_traceback: str) -> list[BaseException]:
    """err and its causes, each as itself where it survives pickling (so the parent's handlers still recognise
    RecipeError, a full disk's OSError, LabelsPending...), else as a RuntimeError carrying its type and message.
    The first carries the child's traceback as a note, which Python prints with an unexpected error."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen and len(chain) < 10:
        seen.add(id(err))
        try:
            copy = pickle.loads(pickle.dumps(err))
        except Exception:  # noqa: BLE001 - unpicklable exceptions are common in libraries
            copy = RuntimeError(f"{type(err).__name__}: {err}")
        chain.append(copy)
        err = err.__cause__ or err.__context__
    chain[0].add_note(f"in the stage's child process:\n{child_traceback.rstrip()}")
    return chain


def _rebuild_chain(chain: list[BaseException]) -> BaseException:
    for outer, inner in zip(chain, chain[1:]):
        outer.__cause__ = inner
    return chain[0]


def _death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the system's out-of-memory killer, or kill -9)" if name == "SIGKILL" else ""
        return f"its process was killed by {name}{hint} before it finished"
    return f"its process exited with code {exitcode} before it finished"
