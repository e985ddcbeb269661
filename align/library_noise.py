"""Keep the terminal for what the user needs: deprecation chatter from the libraries is not it. `align` calls this
at start; the process that forks each stage (align.child_processes.in_child_process) imports this module first, so the
stages inherit the same quiet."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_library_noise() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    # bitsandbytes looks for an optional kernels package on CPU and logs a warning when it is absent.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


quiet_library_noise()  # on import: a forkserver's preload runs imports, nothing else
