"""PPO's own checkpoints (the trl stages checkpoint through their Trainer).

checkpoints/step-N/ holds state.pt (adapters, value head, optimiser, scheduler, KL controller, reward moments, step)
and rng-<rank>.pt per process; it is written under a temporary name and renamed, so it is whole or absent.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from align.runs import replace_dir, write_json_atomic


def newest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    found = [p for p in found if (p / "state.pt").is_file()]
    return found[-1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(out: Path, step: int, model, value_model, optimizer, scheduler, kl_controller, moments,
                    state, keep: int) -> None:
    from peft import get_peft_model_state_dict

    target = out / "checkpoints" / f"step-{step}"
    tmp = target.with_name(f".{target.name}.tmp")
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{state.process_index}.pt")
    if state.is_main_process:
        torch.save({
            "step": step,
            "policy": get_peft_model_state_dict(model, adapter_name="default"),
            "value_adapter": get_peft_model_state_dict(model, adapter_name="value"),
            "value_head": value_model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "kl_controller": kl_controller.state_dict(),
            "reward_moments": moments.state_dict(),
        }, tmp / "state.pt")
    state.wait_for_everyone()
    if state.is_main_process:
        replace_dir(tmp, target)
        for old in sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old)
        write_json_atomic(out / "checkpoints" / "latest.json", {"step": step, "path": str(target)})
    state.wait_for_everyone()


def load_checkpoint(path: Path, model, value_model, optimizer, scheduler, kl_controller, moments, rank: int) -> int:
    from peft import set_peft_model_state_dict

    saved = torch.load(path / "state.pt", map_location=next(model.parameters()).device, weights_only=False)
    set_peft_model_state_dict(model, saved["policy"], adapter_name="default")
    set_peft_model_state_dict(model, saved["value_adapter"], adapter_name="value")
    value_model.head.load_state_dict(saved["value_head"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    kl_controller.load_state_dict(saved["kl_controller"])
    moments.load_state_dict(saved["reward_moments"])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():  # absent when resumed with more processes than saved: those continue unseeded
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return saved["step"]
