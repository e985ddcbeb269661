# python bench/throughput.py --shape tiny                 # CPU smoke run (seconds)
# python bench/throughput.py --shape 135m --rows 64       # the embedded model's shape on CPU
# python bench/throughput.py --shape 1.7b                 # on a GPU: both sides QLoRA (nf4 base)
"""Plain TRL against align on the same work, in one process: SFT tokens/s, DPO pairs/s and rollout tokens/s,
peak memory, and MFU, with the ratio align / TRL. Results go to bench/results/<machine>-<shape>.json and .md.

Both sides start from the same random-init Llama-shaped model (with the embedded SmolLM2 tokenizer), the same
rows and the same LoRA (r=16, all linear layers), and run one epoch; each is timed from model load to the end of
training, so work that a side does before training (DPO's precomputed reference log-probs) is counted.

- TRL: SFTTrainer / DPOTrainer with trl's defaults, except gradient checkpointing off (trl turns it on; off is
  the faster plain setting), batch 8, max_length 1024, bf16: the "TRL default" column; and trl's best plain
  setting of each (SFT: packing with bfd; DPO: precompute_ref_log_probs). align is compared with the faster of
  the two.
- align: the `sft` and `dpo` stages of align itself (align/stages/*.py), run on a recipe with the same settings.
- Rollouts: `model.generate` with the model's default generation settings vs align's rollout path
  (`align.generation.sample_responses`), batch 64. On a GPU each side runs once untimed first (compiling, kernel
  warm-up), since PPO samples with the same shapes at every step.
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
    process (see in_fresh_process), so one arm's peak is not another's."""

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


def build_model(shape: str, out: Path, dtype: str) -> tuple[Path, int]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from align.models import embedded_model_dir

    # a bare GPU machine has no embedded model: bench/gpu_check.py hands over a copy of its tokenizer
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("ALIGN_BENCH_TOKENIZER") or embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


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
              "num_train_epochs": 1, "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no",
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
                "num_train_epochs": 1, "save_strategy": "no", "logging_steps": 1},
    })
    stage_out = out / stage
    stage_out.mkdir(parents=True, exist_ok=True)
    with Meter() as meter:
        metrics = {"sft": sft.run, "dpo": dpo.run}[stage](recipe, stage_out, {})
    return meter, metrics["train_loss"]


def timed_arm(arm, *args) -> dict:
    meter, loss = arm(*args)
    return {"seconds": meter.seconds, "peak_gib": meter.peak_gib, "train_loss": loss}


def in_fresh_process(function, *args):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def rollout_arm(name: str, model_dir: Path, gpu: bool, batch: int, new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.generation import mask_after_eos, sample_responses

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

    if gpu:  # PPO samples every step with the same shapes: compiling and CUDA kernel warm-up are paid once
        rollout()
    torch.manual_seed(0)
    with Meter() as meter:
        made = rollout()
    return {"tokens_per_second": made / meter.seconds, "seconds": meter.seconds, "peak_gib": meter.peak_gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--rows", type=int, default=32, help="SFT demonstrations and DPO pairs per side")
    parser.add_argument("--rollout-batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=None, help="rollout length (default 256 GPU, 32 CPU)")
    parser.add_argument("--only", choices=["sft", "dpo", "rollout"], action="append", help="run only these parts")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    parts = args.only or ["sft", "dpo", "rollout"]
    new_tokens = args.new_tokens or (256 if gpu else 32)

    from transformers import AutoTokenizer

    report = {"machine": machine(), "shape": args.shape, "rows": args.rows, "torch": torch.__version__,
              "quantization": "nf4 (QLoRA)" if gpu else "none (bf16 base on CPU)", "parts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, parameters = build_model(args.shape, Path(tmp) / "model", "bfloat16")
        report["parameters"] = parameters
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for stage in [p for p in parts if p in ("sft", "dpo")]:
            examples = rows(stage, args.rows)
            answers = ("completion",) if stage == "sft" else ("chosen", "rejected")
            tokens = count_tokens(tokenizer, examples, answers)
            part = {"tokens": tokens, "rows": len(examples)}
            arms = [(f"trl {setting}", trl_arm, [setting]) for setting in TRL_SETTINGS[stage]] + [("align", align_arm, [])]
            for name, arm, setting in arms:
                run = in_fresh_process(timed_arm, arm, stage, model_dir, examples, Path(tmp) / name.replace(" ", "-"),
                                       gpu, *setting)
                # 6 N per trained token (forward + backward); DPO also runs the reference forward (2 N).
                flops = (6 + (2 if stage == "dpo" else 0)) * parameters * tokens
                part[name] = {"seconds": round(run["seconds"], 2), "tokens_per_second": tokens / run["seconds"],
                              "rows_per_second": len(examples) / run["seconds"], "peak_gib": round(run["peak_gib"], 2),
                              "train_loss": run["train_loss"], "tflops": flops / run["seconds"] / 1e12}
                if peak_tflops():
                    part[name]["mfu"] = part[name]["tflops"] / peak_tflops()
            best = max((k for k in part if k.startswith("trl ")), key=lambda k: part[k]["tokens_per_second"])
            part["trl"] = {**part[best], "setting": best.removeprefix("trl ")}  # the best plain TRL setting
            part["speedup"] = part["align"]["tokens_per_second"] / part["trl"]["tokens_per_second"]
            report["parts"][stage] = part
        if "rollout" in parts:
            part = {name: in_fresh_process(rollout_arm, name, model_dir, gpu, args.rollout_batch, new_tokens)
                    for name in ("trl", "align")}
            part["speedup"] = part["align"]["tokens_per_second"] / part["trl"]["tokens_per_second"]
            part.update(batch=args.rollout_batch, new_tokens=new_tokens)
            report["parts"]["rollout"] = part

    lines = [f"# {report['machine']}, {args.shape} shape ({parameters / 1e6:.1f}M parameters), "
             f"{report['quantization']}, torch {torch.__version__}", "",
             "| part | TRL default | best plain TRL | align | align / best TRL | peak memory best TRL / align (GiB) "
             "| MFU best TRL / align | train loss best TRL / align |",
             "|---|---|---|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        unit = {"sft": "tokens/s", "dpo": "pairs/s", "rollout": "tokens/s"}[name]
        key = "rows_per_second" if name == "dpo" else "tokens_per_second"
        default = part.get("trl default", part["trl"])
        setting = part["trl"].get("setting", "HF generate")
        mfu = " / ".join(f"{part[s]['mfu']:.1%}" for s in ("trl", "align")) if "mfu" in part["trl"] else "n/a"
        loss = " / ".join(f"{part[s]['train_loss']:.4f}" for s in ("trl", "align")) if "train_loss" in part["trl"] else "n/a"
        lines.append(f"| {name} | {default[key]:.1f} {unit} | {part['trl'][key]:.1f} {unit} ({setting}) | "
                     f"{part['align'][key]:.1f} {unit} | {part['speedup']:.2f}x | "
                     f"{part['trl']['peak_gib']:.2f} / {part['align']['peak_gib']:.2f} | {mfu} | {loss} |")
    text = "\n".join(lines)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"{report['machine'].split()[0].lower().replace('/', '-')}-{args.shape}"
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / f"{stem}.md").write_text(text + "\n")
    print(f"written: {args.results / stem}.json, .md")


if __name__ == "__main__":
    main()
