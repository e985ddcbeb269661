"""What a stage cost: wall time and peak memory (resident memory on CPU; allocated and reserved on GPU), and
giving memory back between stages so the chain's peak is its largest stage's, not their sum."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

SAMPLE_SECONDS = 0.1
GIB = 2**30


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere the peak so far, which is all there is)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune or trim
        return None


def release_memory() -> None:
    """Give back what the last stage left: unreachable objects (models, optimizers, datasets), the CUDA cache,
    and the C allocator's free arenas, which glibc otherwise keeps for the process's whole life."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    trim_allocator()


def trim_allocator() -> None:
    """Hand the C allocator's free pages back to the system. Inference batches of different widths leave holes
    that the next, wider batch cannot reuse, so the heap only grows: scoring 1,740 answers in batches of 64 climbed
    from 1.2 to 2.8 GiB on the CPU. Called after each inference batch (seconds of compute), not per training step,
    where re-faulting the pages cost more than half again the step's time."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


# Every this many optimiser steps. Batches grouped by length change shape from step to step, and the heap keeps the
# pages of every shape it has held; giving them back costs the next step the page faults of one micro-batch's
# activations (about 0.2-0.4 s at the quickstart's 2 rows), where trimming after every step cost 60% more time.
TRIM_EVERY_STEPS = 5


def trim_callback():
    """A TrainerCallback that hands the allocator's free pages back every TRIM_EVERY_STEPS optimiser steps, when
    training runs on the CPU: on a GPU the activations are not on the C heap, and a step may take milliseconds, so
    the trim would cost time and give back little."""
    from transformers import TrainerCallback

    class TrimAllocator(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % TRIM_EVERY_STEPS == 0 and args.device.type == "cpu":
                trim_allocator()

    return TrimAllocator()


class StageResources:
    """Measures a block: `with StageResources() as usage: ...; usage.record()`. Resident memory is sampled every
    SAMPLE_SECONDS in a daemon thread (the peak of a block, which getrusage cannot give after the first stage)."""

    def __enter__(self) -> StageResources:
        self.started = time.time()
        self.rss_start = self.rss_peak = rss_bytes()
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        self.sampler.start()
        self.gpu = self._gpu_reset()
        return self

    def _sample(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            self.rss_peak = max(self.rss_peak, rss_bytes())

    @staticmethod
    def _gpu_reset() -> bool:
        try:
            import torch
        except ImportError:
            return False
        if not torch.cuda.is_available():
            return False
        torch.cuda.reset_peak_memory_stats()
        return True

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.sampler.join()
        self.rss_end = rss_bytes()
        self.rss_peak = max(self.rss_peak, self.rss_end)
        self.seconds = time.time() - self.started

    def record(self) -> dict:
        record = {"seconds": round(self.seconds, 1), "rss_start_gib": round(self.rss_start / GIB, 3),
                  "rss_peak_gib": round(self.rss_peak / GIB, 3), "rss_end_gib": round(self.rss_end / GIB, 3)}
        if self.gpu:
            import torch

            record["gpu_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            record["gpu_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
        return record
