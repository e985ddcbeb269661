# python bench/throughput.py --shape tiny                 # CPU smoke run (seconds)
# python bench/throughput.py --shape 135m --rows 64       # the embedded model's shape on CPU
# python bench/throughput.py --shape 1.7b                 # on a GPU: both sides QLoRA (nf4 base)
"""Plain TRL against align on the same work: SFT tokens/s, DPO pairs/s and rollout tokens/s at steady state,
peak memory, and MFU, with the ratio align / best plain TRL. Results go to bench/results/<machine>-<shape>.json and
.md, rewritten after each arm, so a run stopped part-way keeps every arm it finished.

Both sides start from the same random-init Llama-shaped model (with the embedded SmolLM2 tokenizer), the same
rows and the same LoRA (r=16, all linear layers), QLoRA (nf4 base) on a GPU.

- Steady state: each trainer gets the same clock (a TrainerCallback) that starts after the warm-up steps and stops
  training once the window has lasted --window-seconds (15 on a GPU); tokens are the trainer's own count of the
  non-padding input tokens in that window. Loading, tokenising, DPO's precomputed reference log-probs and the
  warm-up are reported apart, as start-up seconds (time to the first step).
- TRL: SFTTrainer / DPOTrainer with gradient checkpointing off (trl turns it on; off is the faster plain
  setting), batch 8, max_length 1024, bf16: the "default" setting; and trl's best plain setting of each (SFT:
  packing with bfd; DPO: precompute_ref_log_probs). align is compared with the faster one measured. On a GPU only
  the best setting runs unless --trl-settings all (time: both shapes must fit in a few minutes).
- align: the `sft` and `dpo` stages of align itself (align/stages/*.py), on a recipe with the same settings.
- Rollouts: `model.generate` with the model's default generation settings vs align's rollout path
  (`align.generation.sample_responses`), batch 64, each side once untimed first (compiling, kernel warm-up, as PPO
  samples with the same shapes at every step), then repeated for the window.
- On a GPU the arms run one after another in one process (peak memory is torch's, reset per arm); on a CPU each
  in a fresh process (peak memory is the process's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {  # LlamaConfig fields; vocab and special tokens come from the SmolLM2 tokenizer
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": False},
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, no sparsity
BATCH, MAX_LENGTH, LORA_R = 8, 1024, 16
TRL_SETTINGS = {"sft": {"default": {}, "packing": {"packing": True, "packing_strategy": "bfd"}},
                "dpo": {"default": {}, "precompute": {"precompute_ref_log_probs": True}}}
TRL_BEST = {"sft": "packing", "dpo": "precompute"}  # the faster plain setting in every measurement so far
EPOCHS = 1000  # as many as the window needs: the clock stops training when the window is over
ROWS_ON_GPU = {"135m": 2048, "1.7b": 1024, "8b": 512}  # rows tokenised (and DPO reference log-probs precomputed) per arm


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()}"


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


class Meter:
    """Wall time and peak memory (GPU: allocated by torch; CPU: the process's peak RSS). Every arm runs in a fresh
    process on a CPU (see run_arm), so one arm's peak is not another's."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.seconds = time.perf_counter() - self.start


class SteadyClock:
    """Steady-state throughput of whatever trains while it is installed: every transformers Trainer built meanwhile
    counts its non-padding input tokens and gets a callback that notes the time after `warmup_steps` steps and stops
    training once `window_seconds` have passed since (at least one step); tokens and seconds of that window."""

    def __init__(self, warmup_steps: int, window_seconds: float):
        self.warmup_steps, self.window_seconds = warmup_steps, window_seconds
        self.begin = self.first_step = self.start = self.end = None

    def __enter__(self):
        from transformers import Trainer, TrainerCallback

        clock, self.original_init = self, Trainer.__init__

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if clock.warmup_steps == 0:
                    clock.start = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)

            def on_step_begin(self, args, state, control, **kwargs):
                if clock.first_step is None:
                    clock.first_step = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                now = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)
                if state.global_step == clock.warmup_steps:
                    clock.start = now
                elif clock.start is not None and state.global_step > clock.warmup_steps:
                    clock.end = now
                    if now[0] - clock.start[0] >= clock.window_seconds:
                        control.should_training_stop = True

        def init(trainer, *args, **kwargs):
            clock.original_init(trainer, *args, **kwargs)
            trainer.args.include_num_input_tokens_seen = "all"  # on, and counted by count_tokens below

            def count_tokens(inputs):
                # A padded batch's attention mask marks its real tokens. A packed one has no mask and no padding,
                # and counting tokens other than the pad id (transformers' "non_padding") would drop SmolLM2's
                # <|im_end|>, which is also its pad token.
                mask = inputs.get("attention_mask")
                trainer.state.num_input_tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()

            trainer._track_num_input_tokens = count_tokens
            trainer.add_callback(Callback())

        Trainer.__init__ = init
        self.begin = time.perf_counter()
        return self

    def __exit__(self, *exc):
        from transformers import Trainer

        Trainer.__init__ = self.original_init

    def result(self) -> dict:
        if self.start is None or self.end is None:
            raise RuntimeError(f"training ended before the window: fewer than {self.warmup_steps + 1} steps")
        seconds = self.end[0] - self.start[0]
        return {"window_seconds": seconds, "window_tokens": self.end[1] - self.start[1],
                "window_steps": self.end[2] - self.start[2], "startup_seconds": round(self.first_step - self.begin, 2),
                "short_window": seconds < self.window_seconds}


def build_model(shape: str, out: Path, dtype: str) -> tuple[Path, int]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from align.models import embedded_model_dir

    # a bare GPU machine has no embedded model: bench/gpu_check.py hands over a copy of its tokenizer
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("ALIGN_BENCH_TOKENIZER") or embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1.7B init takes a minute on CPU cores
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, parameters


def rows(name: str, count: int) -> list[dict]:
    from align.config import DataSource
    from align.data import load_demonstrations, load_preferences

    loader = load_demonstrations if name == "sft" else load_preferences
    found, _ = loader(DataSource(bundled=name if name == "sft" else "prefs_train"))
    return [found[i % len(found)] for i in range(count)]


def count_tokens(tokenizer, examples: list[dict], answers: tuple[str, ...]) -> int:
    from align.data import token_ids

    return sum(min(len(token_ids(tokenizer, ex["prompt"] + ex[a])), MAX_LENGTH) for ex in examples for a in answers)


def trl_arm(stage: str, model_dir: Path, examples: list[dict], out: Path, gpu: bool, setting: str):
    import datasets
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    common = {"output_dir": str(out), "per_device_train_batch_size": BATCH, "max_length": MAX_LENGTH,
              "num_train_epochs": EPOCHS, "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no",
              "logging_steps": 1, "bf16": True, "use_cpu": not gpu, "seed": 0, **TRL_SETTINGS[stage][setting]}
    with Meter() as meter:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.bfloat16) if gpu else None
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer_class, config_class = {"sft": (trl.SFTTrainer, trl.SFTConfig), "dpo": (trl.DPOTrainer, trl.DPOConfig)}[stage]
        trainer = trainer_class(model=model, args=config_class(**common), train_dataset=datasets.Dataset.from_list(examples),
                                processing_class=tokenizer, peft_config=lora)
        result = trainer.train()
    return meter, result.training_loss


def align_arm(stage: str, model_dir: Path, examples: list[dict], out: Path, gpu: bool):
    from align.config import parse_recipe
    from align.stages import dpo, sft

    data = out / f"{stage}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    recipe = parse_recipe({
        "name": "bench", "output_root": str(out), "stages": [stage], "report_to": [],
        "model": {"name_or_path": str(model_dir), "dtype": "bfloat16"},
        "quantization": {"load_in_4bit": gpu},
        "lora": {"r": LORA_R, "alpha": 2 * LORA_R, "target_modules": "all-linear"},
        stage: {"dataset": str(data), "per_device_train_batch_size": BATCH, "max_length": MAX_LENGTH,
                "num_train_epochs": EPOCHS, "save_strategy": "no", "logging_steps": 1},
    })
    stage_out = out / stage
    stage_out.mkdir(parents=True, exist_ok=True)
    with Meter() as meter:
        metrics = {"sft": sft.run, "dpo": dpo.run}[stage](recipe, stage_out, {})
    return meter, metrics["train_loss"]


def timed_arm(warmup_steps: int, window_seconds: float, arm, *args) -> dict:
    with SteadyClock(warmup_steps, window_seconds) as clock:
        meter, loss = arm(*args)
    return {"seconds": meter.seconds, "peak_gib": meter.peak_gib, "train_loss": loss, **clock.result()}


def run_arm(function, *args):
    """function(*args) in a fresh process on a CPU (its own peak RSS); in this one on a GPU, whose peak memory
    torch counts per arm, memory given back after."""
    if torch.cuda.is_available():
        import gc

        try:
            return function(*args)
        finally:
            gc.collect()
            torch.cuda.empty_cache()
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def rollout_arm(name: str, model_dir: Path, gpu: bool, batch: int, new_tokens: int, window_seconds: float) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.generation import mask_after_eos, sample_responses

    begin = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model.to("cuda" if gpu else "cpu").eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": ex["prompt"][-1]["content"]}],
                                             add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for ex in rows("sft", batch)]
    eos = tokenizer.eos_token_id  # both sides count the tokens up to and including each row's first EOS

    def rollout() -> int:
        if name == "trl":  # plain HF generate with the model's own generation settings
            tokenizer.padding_side = "left"
            enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
            out = model.generate(**enc, do_sample=True, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
            return int(mask_after_eos(out[:, enc["input_ids"].shape[1]:], eos).sum())
        _, _, responses, mask = sample_responses(model, prompts, tokenizer.pad_token_id, eos, new_tokens, cache="auto")
        return int(mask.sum())

    rollout()  # PPO samples every step with the same shapes: compiling and kernel warm-up are paid once
    startup = time.perf_counter() - begin
    torch.manual_seed(0)
    made, rounds = 0, 0
    with Meter() as meter:
        while rounds == 0 or time.perf_counter() - meter.start < window_seconds:
            made += rollout()
            rounds += 1
    return {"tokens_per_second": made / meter.seconds, "window_seconds": round(meter.seconds, 2),
            "window_tokens": made, "rollouts": rounds, "startup_seconds": round(startup, 2),
            "peak_gib": meter.peak_gib, "short_window": meter.seconds < window_seconds}


def result_paths(results: Path, machine_name: str, shape: str) -> tuple[Path, Path]:
    """<results>/<machine>-<shape>.json and .md (built whole: with_suffix would make "x-1.7b" into "x-1.json")."""
    stem = f"{machine_name.split()[0].lower().replace('/', '-')}-{shape}"
    return results / f"{stem}.json", results / f"{stem}.md"


def markdown(report: dict) -> str:
    lines = [f"# {report['machine']}, {report['shape']} shape ({report['parameters'] / 1e6:.1f}M parameters), "
             f"{report['quantization']}, torch {report['torch']}; steady state over >= {report['window_seconds']} s "
             f"after {report['warmup_steps']} warm-up steps", "",
             "| part | best plain TRL | align | align / best TRL | start-up s TRL / align | peak memory TRL / align "
             "(GiB) | MFU TRL / align | train loss TRL / align |",
             "|---|---|---|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        failed = [f"{side}: {part[side]['error']}" for side in part if isinstance(part[side], dict) and "error" in part[side]]
        if failed:
            lines.append(f"| {name} | FAILED: {'; '.join(failed)[:300]} |||||||")
        if "speedup" not in part:
            continue
        unit = {"sft": "tokens/s", "dpo": "pairs/s", "rollout": "tokens/s"}[name]
        key = "rows_per_second" if name == "dpo" else "tokens_per_second"
        setting = part["trl"].get("setting", "HF generate")
        pair = lambda field, fmt: " / ".join(format(part[s][field], fmt) for s in ("trl", "align")) \
            if field in part["trl"] and field in part["align"] else "n/a"
        short = " (window short)" if part["trl"].get("short_window") or part["align"].get("short_window") else ""
        lines.append(f"| {name} | {part['trl'][key]:.1f} {unit} ({setting}) | {part['align'][key]:.1f} {unit} | "
                     f"{part['speedup']:.2f}x{short} | {pair('startup_seconds', '.1f')} | {pair('peak_gib', '.2f')} | "
                     f"{pair('mfu', '.1%')} | {pair('train_loss', '.4f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--rows", type=int, default=None,
                        help="SFT demonstrations and DPO pairs per arm (default: enough for the window on a GPU, 32 on a CPU)")
    parser.add_argument("--rollout-batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=None, help="rollout length (default 256 GPU, 32 CPU)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="steps left out of the window (default 5 GPU, 1 CPU)")
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="steady-state window per arm (default 15 on a GPU; 0 on a CPU: one step after the warm-up)")
    parser.add_argument("--trl-settings", choices=["best", "all"], default=None,
                        help="plain-TRL settings to run: the best known one, or all (default: best on a GPU, all on a CPU)")
    parser.add_argument("--only", choices=["sft", "dpo", "rollout"], action="append", help="run only these parts")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    parts = args.only or ["sft", "dpo", "rollout"]
    new_tokens = args.new_tokens or (256 if gpu else 32)
    warmup = args.warmup_steps if args.warmup_steps is not None else (5 if gpu else 1)
    window = args.window_seconds if args.window_seconds is not None else (15.0 if gpu else 0.0)
    row_count = args.rows or (ROWS_ON_GPU.get(args.shape, 256) if gpu else 32)
    settings = args.trl_settings or ("best" if gpu else "all")

    from transformers import AutoTokenizer

    report = {"machine": machine(), "shape": args.shape, "rows": row_count, "torch": torch.__version__,
              "quantization": "nf4 (QLoRA)" if gpu else "none (bf16 base on CPU)", "warmup_steps": warmup,
              "window_seconds": window, "trl_settings": settings, "parts": {}}
    args.results.mkdir(parents=True, exist_ok=True)
    json_path, table_path = result_paths(args.results, report["machine"], args.shape)

    def save() -> None:
        """After every arm, so that a run stopped part-way keeps what it measured; each file replaced whole, since
        make gpu-check reads them while this runs."""
        for path, text in ((json_path, json.dumps(report, indent=2)), (table_path, markdown(report))):
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(text + "\n")
            temporary.replace(path)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, parameters = build_model(args.shape, Path(tmp) / "model", "bfloat16")
        report["parameters"] = parameters
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for stage in [p for p in parts if p in ("sft", "dpo")]:
            examples = rows(stage, row_count)
            answers = ("completion",) if stage == "sft" else ("chosen", "rejected")
            tokens_per_row = count_tokens(tokenizer, examples, answers) / len(examples)
            part = report["parts"][stage] = {"rows": len(examples), "tokens_per_row": round(tokens_per_row, 1)}
            chosen = TRL_SETTINGS[stage] if settings == "all" else [TRL_BEST[stage]]
            arms = [(f"trl {setting}", trl_arm, [setting]) for setting in chosen] + [("align", align_arm, [])]
            for name, arm, setting in arms:
                print(f"[throughput] {args.shape} {stage} {name} ...", flush=True)
                try:
                    run = run_arm(timed_arm, warmup, window, arm, stage, model_dir, examples,
                                  Path(tmp) / name.replace(" ", "-"), gpu, *setting)
                except Exception as err:  # noqa: BLE001 - one arm's failure (out of memory, say) is a result too
                    part[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
                    print(f"[throughput] {args.shape} {stage} {name} FAILED: {part[name]['error']}", flush=True)
                    save()
                    continue
                per_second = run["window_tokens"] / run["window_seconds"]
                # 6 N per trained token (forward + backward); DPO also runs the reference forward (2 N), unless
                # precomputed before the window
                reference = stage == "dpo" and not (name == "align" or setting == ["precompute"])
                flops = (6 + (2 if reference else 0)) * parameters * per_second
                part[name] = {**{k: v for k, v in run.items() if k != "peak_gib"}, "seconds": round(run["seconds"], 2),
                              "peak_gib": round(run["peak_gib"], 2), "tokens_per_second": per_second,
                              # every arm takes BATCH rows per step (SFT packing: BATCH packed sequences)
                              "rows_per_second": run["window_steps"] * BATCH / run["window_seconds"],
                              "tflops": flops / 1e12}
                if peak_tflops():
                    part[name]["mfu"] = part[name]["tflops"] / peak_tflops()
                print(f"[throughput] {args.shape} {stage} {name}: {per_second:,.0f} tokens/s over "
                      f"{run['window_seconds']:.1f} s, start-up {run['startup_seconds']} s", flush=True)
                save()
            # DPO's target is pairs/s (its rows); SFT's tokens/s (packing changes how many rows a step holds)
            key = "rows_per_second" if stage == "dpo" else "tokens_per_second"
            measured = [k for k in part if k.startswith("trl ") and "error" not in part[k]]
            if measured and "error" not in part["align"]:
                best = max(measured, key=lambda k: part[k][key])
                part["trl"] = {**part[best], "setting": best.removeprefix("trl ")}  # the best plain TRL setting
                part["speedup"] = part["align"][key] / part["trl"][key]
            save()
        if "rollout" in parts:
            part = report["parts"]["rollout"] = {"batch": args.rollout_batch, "new_tokens": new_tokens}
            for name in ("trl", "align"):
                print(f"[throughput] {args.shape} rollout {name} ...", flush=True)
                try:
                    part[name] = run_arm(rollout_arm, name, model_dir, gpu, args.rollout_batch, new_tokens, window)
                except Exception as err:  # noqa: BLE001 - as for the training arms
                    part[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
                    print(f"[throughput] {args.shape} rollout {name} FAILED: {part[name]['error']}", flush=True)
                save()
            if "error" not in part["trl"] and "error" not in part["align"]:
                part["speedup"] = part["align"]["tokens_per_second"] / part["trl"]["tokens_per_second"]
            save()
    print(markdown(report))
    print(f"written: {json_path}, {table_path.name}")


if __name__ == "__main__":
    main()
