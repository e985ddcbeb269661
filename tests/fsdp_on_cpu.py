# accelerate launch --config_file tests/fsdp2_cpu.yaml tests/fsdp_on_cpu.py run RECIPE   (what tests/test_sharded.py runs)
"""`align` under FSDP2 on CPU processes, for the tests: torch shards over gloo on a CPU, but accelerate 1.15 files
every CPU process group as MULTI_CPU (DDP) even when its config says FSDP. This turns the group back into FSDP with
the config's plugin, so the trainers take accelerate's real FSDP2 path (fully_shard, sharded checkpoints); nothing
of align or the trainers is replaced."""

import os
import sys

from accelerate import state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs.get("fsdp_plugin")
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from align.cli import main

    sys.exit(main())
