"""`dtype: auto` follows what the CPU multiplies natively: bf16 with AVX-512 BF16 or AMX, float32 where bf16 would be
emulated (about 50x slower than float32). Both kinds of CPU are imitated by patching align.models.cpu_bf16_native."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align import models
from tests.conftest import tiny_recipe

REPO = Path(__file__).resolve().parent.parent
CPU_RECIPES = sorted((REPO / "recipes").glob("*.yaml"))  # recipes/gpu/ may ask for bf16 outright
AUTO = {True: torch.bfloat16, False: torch.float32}


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def cpu(request, monkeypatch):
    """A CPU with (True) or without (False) native bf16, and no GPU."""
    monkeypatch.setattr(models, "on_gpu", lambda: False)
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: request.param)
    return request.param


def test_auto_follows_the_cpu(cpu):
    from align.config import ModelSection, QuantizationSection

    assert models.torch_dtype("auto") == AUTO[cpu]
    assert models.torch_dtype("float32") == torch.float32 and models.torch_dtype("bfloat16") == torch.bfloat16
    assert models.load_kwargs(ModelSection(), QuantizationSection())["dtype"] == AUTO[cpu]


@pytest.mark.parametrize("path", CPU_RECIPES, ids=lambda p: p.stem)
def test_cpu_recipes_take_bf16_only_where_it_is_native(path, cpu, tmp_path):
    """The recipe loader's result, the weights dtype and trl's bf16 flag all follow the CPU."""
    from align.config import load_recipe
    from align.trainer_settings import derived_from_recipe

    recipe = load_recipe(path)
    assert recipe.model.dtype == "auto"
    assert models.load_kwargs(recipe.model, recipe.quantization)["dtype"] == AUTO[cpu]
    assert derived_from_recipe(recipe, tmp_path)["bf16"] is cpu


def test_quickstart_by_name_follows_the_cpu(cpu):
    from align.config import load_recipe

    assert models.torch_dtype(load_recipe("quickstart").model.dtype) == AUTO[cpu]


@pytest.mark.parametrize("isa", ["AVX2", "avx512_core"])
def test_a_onednn_limit_below_bf16_counts_as_emulated(monkeypatch, isa):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes an AVX-512 BF16 CPU emulate bf16 (what a bf16 matmul then costs is in
    align.models.cpu_bf16_native's docstring), so auto must not pick bf16 under it."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert models.cpu_bf16_native() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert models.cpu_bf16_native() is True


@pytest.mark.parametrize(("flags", "native"), [("fpu avx2 avx512f", False), ("fpu avx2 avx512f avx512_bf16", True),
                                               ("fpu avx2 amx_bf16 amx_tile", True)])
def test_without_torchs_helpers_the_cpuinfo_flags_decide(monkeypatch, tmp_path, flags, native):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(models, "CPUINFO", tmp_path / "cpuinfo")
    assert models.cpu_bf16_native() is native
    monkeypatch.setattr(models, "CPUINFO", tmp_path / "absent")
    assert models.cpu_bf16_native() is False


def test_versions_json_records_the_cpu(cpu, monkeypatch, tmp_path):
    """The run writes versions.json before its first stage; the stage is stopped there."""
    from align import pipeline
    from align.config import parse_recipe

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    monkeypatch.setattr(pipeline, "measured_stage", stop)
    recipe = parse_recipe(tiny_recipe(tmp_path / "no-model", tmp_path, ["sft"]))
    with pytest.raises(Stop):
        pipeline.run_recipe(recipe)
    recorded = json.loads((tmp_path / "tiny" / "versions.json").read_text())
    assert recorded["cpu"] == {"isa": torch.backends.cpu.get_cpu_capability(), "bf16_native": cpu}


def test_env_prints_the_cpu(cpu, capsys):
    from align.cli import main

    assert main(["env"]) == 0
    isa = torch.backends.cpu.get_cpu_capability()
    expected = f"cpu: {isa} (native bf16: yes) -> auto dtype bfloat16" if cpu else \
        f"cpu: {isa} (native bf16: no) -> auto dtype float32"
    assert expected in capsys.readouterr().out


def test_this_machine_is_reported_as_it_is():
    """No patching: the check agrees with torch's own view of the CPU (or with /proc/cpuinfo where torch has none)."""
    capability = models.cpu_capability()
    assert capability["isa"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(capability["bf16_native"], bool)
