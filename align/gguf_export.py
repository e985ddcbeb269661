"""GGUF for llama.cpp and Ollama: convert a merged export with llama.cpp's own converter, write an Ollama
Modelfile, and check the file by loading it back with llama.cpp and with transformers' GGUF loader.

The converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py) comes from the llama-cpp-python source
distribution of the version align pins, fetched from PyPI once into the align cache: the tensor mapping is
llama.cpp's, never ours. llama.cpp itself (to load the file back) is the `gguf` extra: pip install 'align[gguf]'.

    ollama create my-model -f runs/NAME/export/gguf/Modelfile && ollama run my-model
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the converter and the loader come from this one release, so they agree
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
# Chat templates Ollama needs as Go templates (it does not run Jinja), keyed by a marker of the template family.
OLLAMA_TEMPLATES = {
    "<|im_start|>": ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                     '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                     '<|im_start|>assistant\n', ["<|im_end|>", "<|im_start|>"]),
    "<|start_header_id|>": ('{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>'
                            '{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
                            '{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n',
                            ["<|eot_id|>", "<|start_header_id|>"]),
}


class GGUFError(RuntimeError):
    """The GGUF could not be made, or does not answer as the merged model does."""


def converter_dir(cache: Path) -> Path:
    """llama.cpp's converter, extracted once from the llama-cpp-python sdist (downloaded from PyPI if needed)."""
    target = cache / "llama.cpp" / LLAMA_CPP_PYTHON
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.is_file():
        print(f"[export] fetching llama.cpp's converter (llama-cpp-python {LLAMA_CPP_PYTHON} sdist, once)...",
              flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(downloads)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not archive.is_file():
            raise GGUFError(f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON} source from PyPI to get "
                            f"llama.cpp's converter:\n{done.stderr[-1500:]}")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(CONVERTER_PARTS) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        sdist.extractall(tmp, members=members, filter="data")
    tmp.replace(target)
    return target


def convert(model_dir: Path, out_file: Path, outtype: str, cache: Path) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on a merged Hugging Face model directory."""
    script = converter_dir(cache) / "convert_hf_to_gguf.py"
    done = subprocess.run([sys.executable, str(script), str(model_dir), "--outfile", str(out_file),
                           "--outtype", outtype], capture_output=True, text=True)
    if done.returncode != 0 or not out_file.is_file():
        raise GGUFError(f"llama.cpp's converter failed on {model_dir}:\n{(done.stderr or done.stdout)[-3000:]}")


def modelfile(gguf_name: str, chat_template: str, eos_token: str) -> str:
    """An Ollama Modelfile: the model file, the chat template as a Go template, and the stop tokens."""
    family = next((marker for marker in OLLAMA_TEMPLATES if marker in (chat_template or "")), None)
    if family is None:
        # No Go template known for this family: Ollama then reads the chat template stored in the GGUF.
        return f"FROM ./{gguf_name}\nPARAMETER stop \"{eos_token}\"\nPARAMETER temperature 0\n"
    template, stops = OLLAMA_TEMPLATES[family]
    stop_lines = "".join(f'PARAMETER stop "{stop}"\n' for stop in dict.fromkeys([eos_token, *stops]))
    return f'FROM ./{gguf_name}\nTEMPLATE """{template}"""\n{stop_lines}PARAMETER temperature 0\n'


def load_without_repacking(llama_class, path: Path):
    """llama.cpp loaded for the check with its weights in plain CPU buffers. Its default repacks them for the CPU's
    fastest kernels ("extra buffer types"), and on Intel CPUs with AMX the repacked q8_0 kernels crash the process
    (a segmentation fault in decode, seen with llama-cpp-python 0.3.36); plain buffers give the same answers."""
    import llama_cpp.llama as llama_module

    default_params = llama_module.llama_cpp.llama_model_default_params

    def plain_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = plain_buffers
    try:
        return llama_class(model_path=str(path), n_ctx=1024, n_threads=os.cpu_count(), verbose=False,
                           logits_all=True, seed=0)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default_params


def greedy(llm, ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    out = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if token in eos_ids or len(out) >= max_new_tokens:
            break
        out.append(token)
    return out


def llama_cpp_agreement(llm, ids: list[int], answer: list[int]) -> int:
    """How many tokens of `answer` llama.cpp predicts top-1 when fed the prompt and the answer so far."""
    import numpy as np

    llm.reset()
    llm.eval(ids + answer)
    predicted = np.asarray(llm.scores[len(ids) - 1 : len(ids) + len(answer) - 1]).argmax(-1)
    return int((predicted == np.asarray(answer)).sum())


def transformers_agreement(model, ids: list[int], answer: list[int]) -> int:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + answer])).logits[0, len(ids) - 1 : -1]
    return int((logits.argmax(-1) == torch.tensor(answer)).sum())


def export_gguf(model_dir: Path, out_dir: Path, outtype: str, tokenizer, prompts: list[list[dict]],
                expected: list[dict], max_new_tokens: int, min_agreement: float, cache: Path) -> dict:
    """<out_dir>/model.<outtype>.gguf and its Modelfile, moved into place only after these checks against the
    merged model's greedy answers to the check prompts (`expected`, from align.generation.generate_answers):

    - the file's chat template and end-of-turn token are the tokenizer's, and llama.cpp's own chat completion
      (what Ollama and llama.cpp's server run) answers exactly as llama.cpp does on the tokenizer's prompt tokens;
    - llama.cpp and transformers' GGUF loader predict the merged model's answer tokens: all of them and the same
      greedy answers for f16; at least `min_agreement` of them for quantised types, whose rounding moves a small
      model's close calls."""
    from transformers import AutoModelForCausalLM

    from align.data import token_ids

    try:
        from llama_cpp import Llama
    except ImportError:
        raise GGUFError("checking a GGUF needs llama.cpp: pip install 'align[gguf]' (builds llama-cpp-python "
                        f"{LLAMA_CPP_PYTHON} once)") from None
    name = f"model.{outtype}.gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{name}"  # ends in .gguf: transformers picks its loader by the suffix
    convert(model_dir, tmp, outtype, cache)

    eos = {tokenizer.eos_token_id}
    answers = [[t for t in answer["token_ids"] if t not in eos] for answer in expected]
    prompt_ids = [token_ids(tokenizer, prompt, add_generation_prompt=True) for prompt in prompts]
    llm = load_without_repacking(Llama, tmp)
    problems = []
    if llm.metadata.get("tokenizer.chat_template") != tokenizer.chat_template:
        problems.append("the chat template stored in the GGUF is not the tokenizer's")
    if int(llm.metadata.get("tokenizer.ggml.eos_token_id", -1)) != tokenizer.eos_token_id:
        problems.append(f"the GGUF's end-of-turn token id {llm.metadata.get('tokenizer.ggml.eos_token_id')} is not "
                        f"the tokenizer's {tokenizer.eos_token_id} ({tokenizer.eos_token})")
    llama_greedy = [greedy(llm, ids, max_new_tokens, eos) for ids in prompt_ids]
    llama_texts = [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in llama_greedy]
    chats = [llama_cpp_chat(llm, prompt, max_new_tokens).strip() for prompt in prompts]
    llama_agree = sum(llama_cpp_agreement(llm, ids, answer) for ids, answer in zip(prompt_ids, answers))
    llm.close()
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, gguf_file=tmp.name).eval()
    hf_agree = sum(transformers_agreement(reloaded, ids, answer) for ids, answer in zip(prompt_ids, answers))
    total = max(1, sum(len(answer) for answer in answers))
    texts = [answer["text"] for answer in expected]
    checks = {
        "gguf_llama_cpp_token_agreement": llama_agree / total,
        "gguf_transformers_token_agreement": hf_agree / total,
        "gguf_llama_cpp_same_greedy_answers": sum(a == b for a, b in zip(llama_texts, texts)),
        "gguf_chat_template_same_answers": sum(a == b for a, b in zip(chats, llama_texts)),
        "gguf_check_prompts": len(prompts),
    }
    if checks["gguf_chat_template_same_answers"] < len(prompts):
        problems.append("llama.cpp's chat completion (the template and stop tokens in the file) answers "
                        "differently from llama.cpp on the tokenizer's own prompt tokens")
    needed = 1.0 if outtype == "f16" else min_agreement
    for engine in ("llama_cpp", "transformers"):
        if checks[f"gguf_{engine}_token_agreement"] < needed:
            problems.append(f"{engine} predicts {checks[f'gguf_{engine}_token_agreement']:.3f} of the merged "
                            f"model's answer tokens (needed {needed})")
    if outtype == "f16" and checks["gguf_llama_cpp_same_greedy_answers"] < len(prompts):
        problems.append("llama.cpp's greedy answers differ from the merged model's")
    if problems:
        lines = "\n".join(f"  {p[-1]['content']!r}: merged {t!r} | llama.cpp {g!r} | llama.cpp chat {c!r}"
                          for p, t, g, c in zip(prompts, texts, llama_texts, chats))
        raise GGUFError("the GGUF does not answer as the merged model does: " + "; ".join(problems)
                        + f"\n{lines}\nIt was left in {tmp} for inspection.")
    tmp.replace(out_dir / name)
    (out_dir / "Modelfile").write_text(modelfile(name, tokenizer.chat_template, tokenizer.eos_token))
    print(f"[export] {out_dir / name}: llama.cpp predicts {checks['gguf_llama_cpp_token_agreement']:.3f} of the "
          f"merged model's answer tokens, {checks['gguf_llama_cpp_same_greedy_answers']} of {len(prompts)} greedy "
          f"answers the same; chat template and stop token checked. Ollama: ollama create NAME -f "
          f"{out_dir / 'Modelfile'}", flush=True)
    return {"gguf": str(out_dir / name), "gguf_bytes": (out_dir / name).stat().st_size, **checks}


def llama_cpp_chat(llm, messages: list[dict], max_new_tokens: int) -> str:
    """A chat completion through the chat template and stop tokens stored in the GGUF (what Ollama and
    llama.cpp's server use)."""
    reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=max_new_tokens,
                                       repeat_penalty=1.0)
    return reply["choices"][0]["message"]["content"]
