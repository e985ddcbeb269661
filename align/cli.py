"""The `align` command: run recipes, validate them, export and chat with the results.

    align run recipes/quickstart.yaml                 # every stage; finished stages are skipped on re-run
    align run recipes/quickstart.yaml sft.num_train_epochs=2 --from dpo
    align validate recipes/gpu/qwen2.5-1.5b.yaml      # no training, no downloads
    align export runs/quickstart && align chat runs/quickstart
    align label --pairs pairs.jsonl --db labels.db --users users.txt   # label in the browser (ui/)
    align labels stats labels.db && align labels export labels.db prefs.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `align labels export --kind`: what each writes, and the stages that train on it
EXPORT_KINDS = {"pairs": ("preference pairs", "reward and dpo"), "ratings": ("rated answers", "kto"),
                "corrections": ("corrected answers", "sft"), "winners": ("best answers per prompt", "sft")}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says what happens without it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.required or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.default is None or action.default is False:
            return f"{text} (default: {'off' if action.default is False else 'none'})"
        return f"{text} (default: %(default)s)"


def _command(sub, name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is listed by its parent and whose --help explains it in full."""
    return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
                          formatter_class=_Help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", formatter_class=_Help,
        description="Align chat models the ChatGPT/InstructGPT way, on LoRA adapters (4-bit QLoRA on GPU). A recipe "
        "chains the stages: supervised fine-tuning (SFT), a reward model on preference pairs, then DPO, KTO, online "
        "DPO rounds, PPO, RLOO or GRPO, an evaluation (gold judges, reward-model win rate) and a merged export. "
        "People's labels come from a labelling web app (A/B pairs, a blind arena) and from chat feedback (ratings "
        "and corrections of a model's replies), kept in a label database that recipes read.",
        epilog="Start with: align run recipes/quickstart.yaml   (CPU, embedded model: about 25 minutes)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(sub, "run", "run a recipe's stages", "Run a recipe. Outputs go to <output_root>/<name>/<stage>/; "
                   "finished stages are skipped when you run it again. Exit code 3: an online_dpo round with label_db "
                   "waits for people's labels; run it again after.")
    run.add_argument("recipe", help="recipe YAML file, or a shipped recipe's name as `align ls` prints it")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="override recipe keys, e.g. sft.num_train_epochs=2 (YAML values; a stage the recipe runs)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--only", metavar="STAGE",
                       help="run just this stage (earlier ones must have finished); default: every stage not finished")
    group.add_argument("--from", dest="start", metavar="STAGE",
                       help="redo this stage and the ones after it (earlier results are moved aside, not deleted)")

    val = _command(sub, "validate", "check a recipe and its datasets without training or downloading",
                   "Check a recipe as `align run` would, without training or downloading: every key and type, every "
                   "dataset row, prompt lengths against max_length; print the trl settings that differ from trl's "
                   "defaults and which stages would run.")
    val.add_argument("recipe", help="recipe YAML file, or a shipped recipe's name as `align ls` prints it")
    val.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, as for `align run`")
    val.add_argument("--accelerate-config", metavar="FILE",
                     help="also check the recipe against this accelerate launch config (FSDP, DeepSpeed, DDP)")

    _command(sub, "ls", "list the shipped recipes", "List the recipes that ship with align, by the name `align run` "
             "takes (a path in a checkout), with their descriptions and stages.")

    exp = _command(sub, "export", "merge a run's final adapter into a full model (needs only the run dir)",
                   "Merge the last finished policy adapter of a run into its base model, in Hugging Face format, "
                   "into RUN_DIR/export/model; the run directory is all it needs.")
    exp.add_argument("run_dir", help="e.g. runs/quickstart")

    chat = _command(sub, "chat", "chat in the terminal with a model, an export, a run or one of its stages",
                    "Chat with a model in the terminal, its answers streamed. An empty line or Ctrl-D quits; /reset "
                    "clears the history.")
    chat.add_argument("model", help="embedded, hub id, model dir, export, run dir (its export, else its final "
                      "policy) or a run's stage dir (runs/x/sft)")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=_positive_int, default=256, help="answer length cap in tokens")
    chat.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    chat.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (with a temperature above 0)")

    _command(sub, "env", "print library versions and the device", "Print the Python and library versions, the CUDA "
             "device (or that there is none) and what `dtype: auto` becomes on this machine.")

    ev = _command(sub, "eval", "compare two chat models on held-out prompts (reward model, optionally people)",
                  "Both models answer held-out prompts (greedy); a run's reward model judges. Reports win rate with a "
                  "95% interval, reward gap, KL (shared tokenizer), lengths and their correlation with reward, EOS "
                  "and repetition rates, perplexity, BLEU and ROUGE-L.")
    ev.add_argument("target", help="embedded, hub id, model dir, export, run dir (its final policy) or stage dir")
    ev.add_argument("--against", help="the model to compare with (default for a run dir: its sft stage)")
    ev.add_argument("--reward", metavar="RUN_DIR", help="run whose reward model judges (default: the target's run)")
    ev.add_argument("--dataset", default="bundled:prefs_test", help="held-out preference rows (prompts + references)")
    ev.add_argument("--max-prompts", type=_positive_int, default=64, help="compare on at most this many prompts")
    ev.add_argument("--max-new-tokens", type=_positive_int, default=64, help="answer length cap in tokens")
    ev.add_argument("--out", help="output directory (default: RUN_DIR/compare-<against> or evals/<a>-vs-<b>)")
    ev.add_argument("--human", metavar="LABELS_DB", help="also queue the pairs for blind labelling (`align label "
                    "--db LABELS_DB`) and report the human win rate of what is labelled so far")

    report = _command(sub, "report", "(re)write RUN_DIR/report.html: curves, evaluation table, samples")
    report.add_argument("run_dir", help="e.g. runs/quickstart")

    label = _command(sub, "label", "label preference pairs in the browser (Gradio app)",
                     "Serve the labelling app. Pairs come from --pairs files, or from --prompts answered by one model "
                     "(two samples) or two models (e.g. SFT vs DPO), generated as needed. Labels go to the --db SQLite "
                     "file; run again to continue where you stopped.")
    label.add_argument("--db", required=True, help="label database (SQLite), created if missing, e.g. labels.db")
    label.add_argument("--pairs", action="append", metavar="FILE",
                       help="JSONL/JSON/CSV/Parquet rows: prompt + response_a/response_b (or chosen/rejected); repeatable")
    label.add_argument("--prompts", metavar="FILE", help="prompts for --models to answer (file, or bundled:NAME)")
    label.add_argument("--models", nargs="+", metavar="MODEL",
                       help="one or two models: embedded, hub id, model dir, run dir, or a run's stage dir (runs/x/sft)")
    label.add_argument("--overlap", type=_positive_int, default=1, help="annotators per pair (for agreement)")
    label.add_argument("--lease-minutes", type=_positive_float, default=60.0,
                       help="a pair shown but not judged for this long may go to someone else")
    label.add_argument("--chat", metavar="MODEL", help="also serve a Chat tab with this model: people rate and "
                       "correct its replies (as `align feedback`)")
    _serving_options(label)

    arena = _command(sub, "arena", "chat with two models side by side (blind) and vote",
                     "Serve the arena: both models answer each message in random order, unnamed until you vote. "
                     "Votes go to the --db label database.")
    arena.add_argument("model_a", help="embedded, hub id, model dir, run dir, or a run's stage dir")
    arena.add_argument("model_b", help="the other model, named the same ways")
    arena.add_argument("--db", required=True, help="label database (SQLite), created if missing")
    arena.set_defaults(overlap=1, lease_minutes=60.0)
    _serving_options(arena)

    feedback = _command(sub, "feedback", "chat with a model in the browser; rate and correct its replies",
                        "Serve the chat-feedback app: a logged-in person chats with MODEL, rates each reply up or "
                        "down and may edit it into the answer they wanted. Replies, ratings and corrections go to the "
                        "--db label database, where recipes read them (labels: DB): corrections for sft, "
                        "correction-over-reply pairs for reward and dpo, ratings for kto; `align labels export "
                        "--kind` writes them as files.")
    feedback.add_argument("model", help="embedded, hub id, model dir, export, run dir, or a run's stage dir")
    feedback.add_argument("--db", required=True, help="label database (SQLite), created if missing")
    feedback.set_defaults(overlap=1, lease_minutes=60.0)
    _serving_options(feedback)

    labels = _command(sub, "labels", "label database: stats, export (pairs, ratings, corrections), judge, backup, "
                      "check, accounts", "Work with a label database written by `align label`, `arena` and "
                      "`feedback`: agreement statistics, export as training files, a labeller function judging what "
                      "waits, a consistent backup while the server runs, an integrity check, and annotator accounts.")
    labels_sub = labels.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    stats = _command(labels_sub, "stats", "counts per annotator, agreement (Cohen/Fleiss kappa), position bias",
                     "Counts per annotator, agreement (Cohen/Fleiss kappa), position bias, and the chat feedback's "
                     "ratings and corrections per model.")
    stats.add_argument("db", help="label database")
    stats.add_argument("--json", action="store_true", help="print the report as JSON")
    export_labels = _command(labels_sub, "export", "labels as training rows (JSONL or a Hugging Face dataset)",
                             "Write a label database's labels as rows a recipe's stage reads: --kind pairs (A/B "
                             "judgments as prompt/chosen/rejected, for reward and dpo), ratings (chat ratings as "
                             "prompt/completion/label, for kto; a correction is a wanted answer), corrections (chat "
                             "corrections as messages, for sft), winners (each prompt's answer with the most A/B wins "
                             "net of losses, as messages, for sft: best-of-n distillation).")
    export_labels.add_argument("db", help="label database")
    export_labels.add_argument("out", help="out.jsonl, or a directory for --format hf (datasets.save_to_disk)")
    export_labels.add_argument("--kind", choices=EXPORT_KINDS, default="pairs", help="which labels to write")
    export_labels.add_argument("--format", choices=["jsonl", "hf"], default="jsonl", help="file format")
    export_labels.add_argument("--keep-ties", action="store_true",
                               help="pairs: keep tie and both-bad judgments (column 'choice' says which); not for "
                               "training")
    export_labels.add_argument("--majority", action="store_true",
                               help="pairs: one row per pair, the response more annotators preferred (no strict "
                               "winner: dropped)")
    backup = _command(labels_sub, "backup", "a consistent copy of a label database, safe while the server writes",
                      "Copy a label database with SQLite's online backup, safe while the server writes, then check "
                      "the copy's integrity. An existing file is not overwritten without --force.")
    backup.add_argument("db", help="label database")
    backup.add_argument("out", help="the backup file, e.g. backups/labels-$(date +%%F-%%H%%M).db")
    backup.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    judge = _command(labels_sub, "judge", "have a labeller function judge the pairs waiting in a label database",
                     "Judge the pairs waiting in a label database with a labeller function standing in for an "
                     "annotator (align.labeller:simulated, or your own 'module:function' / 'file.py:function'): it "
                     "gets each pair as a person in the web app would, A/B in random order, with the prompt's row "
                     "(answer key, category) that queued items carry, and submits its choice under --annotator. "
                     "Pairs that annotator judged before are not given again. With --labels-per-pair N it judges "
                     "each pair as N annotators (ANNOTATOR, ANNOTATOR-2, ...), each with its own noise, until each "
                     "pair has N annotators (people who judged it, or hold it on screen, count too); `align labels export "
                     "--majority` gives each pair's majority.")
    judge.add_argument("db", help="label database")
    judge.add_argument("--labeller", required=True, metavar="MODULE:FUNCTION",
                       help="the labeller, e.g. align.labeller:simulated (see align/labeller.py)")
    judge.add_argument("--annotator", default="simulated-labeller", help="the name its labels are stored under")
    judge.add_argument("--noise", type=float, default=0.2, help="share of its decisive labels flipped at random")
    judge.add_argument("--source", help="only the pairs queued from this source, e.g. RUN/online_dpo/round-1 for "
                       "one on-policy round (an unknown one is refused with the list); default: every waiting pair")
    judge.add_argument("--seed", type=int, default=0, help="seeds the A/B order and the label noise")
    judge.add_argument("--labels-per-pair", type=int, default=1, metavar="N",
                       help="labels each pair gets, as N annotators with their own noise (1 to 5)")
    check = _command(labels_sub, "check", "integrity check and row counts of a label database (or a backup)")
    check.add_argument("db", help="label database or backup")
    add_user = _command(labels_sub, "add-user", "add an annotator account (salted password hash) to a users file")
    add_user.add_argument("users_file", help="users file (created if missing), as --users and ALIGN_LABEL_USERS take")
    add_user.add_argument("name", help="the annotator's login name")
    add_user.add_argument("--admin", action="store_true", help="may see the statistics tab")
    add_user.add_argument("--password-stdin", action="store_true",
                          help="read the password from standard input (default: ask at the terminal)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {value})")
    return value


def _serving_options(parser) -> None:
    parser.add_argument("--users", metavar="FILE", help="annotator accounts, name:password[:admin] per line "
                        "(default: the file ALIGN_LABEL_USERS names); required unless --allow-anonymous")
    parser.add_argument("--allow-anonymous", action="store_true", help="let people label without logging in")
    parser.add_argument("--login-max-failures", type=_positive_int, default=10,
                        help="failed logins in a row that lock an account (an address gets 3x) for --login-lock-minutes")
    parser.add_argument("--login-lock-minutes", type=_positive_float, default=15.0,
                        help="how long a locked account or address is refused without a password check")
    parser.add_argument("--login-delay-seconds", type=_positive_float, default=1.0,
                        help="wait imposed after a failed login, doubling with each further failure")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 opens it to your network")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap for model-written responses")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="base seed of model-written responses")


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run_command(argv)
        sys.stdout.flush()  # a reader that has gone shows up here, not as a traceback at exit
        return code
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise  # some other pipe broke: that is an error to see
        # The reader stopped early (`align ls | head`): end quietly, as other command-line tools do. Python would
        # flush stdout once more at exit and fail again, so point it at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end has closed (poll reports an error on its writing end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file behind stdout, or no poll on this platform
        return False


def _run_command(argv: list[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may also come after --from/--only (argparse stops collecting them at the first flag)
    late = [item for item in extra if "=" in item and not item.startswith("-")]
    if late and args.command in ("run", "validate"):
        args.overrides += late
    if [item for item in extra if item not in late] or (late and args.command not in ("run", "validate")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # A process started as the `align` command has computed nothing before this; a program calling main() may have.
    args.fresh_process = argv is None
    from align.library_noise import quiet_library_noise

    quiet_library_noise()
    from align.config import RecipeError
    from align.data import DataError
    from align.gguf_export import GGUFError
    from align.labelling.accounts import AccountError
    from align.labelling.store import LabelError
    from align.models import ModelError
    from align.child_processes import StageProcessDied
    from align.run_lock import RunLocked
    from align.trainers import TrainingDiverged

    try:
        return COMMANDS[args.command](args)
    except (RecipeError, DataError, ModelError, LabelError, AccountError, FileNotFoundError, MissingExtra,
            TrainingDiverged, RunLocked, GGUFError, StageProcessDied) as err:
        print(f"align {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        where = disk_full(err)
        if where is None:
            raise
        print(f"align {args.command}: error: no space left on the device (writing {where}). Free some space and "
              f"run the same command again: finished stages, complete checkpoints and saved labels are kept, and "
              f"the write that failed is never taken for a finished one.", file=sys.stderr)
        return 2


def disk_full(err: BaseException) -> str | None:
    """What was being written when the disk filled up, if that is what `err` (or its cause) is; else None.
    Libraries report it differently: OSError ENOSPC, safetensors' "os error 28", SQLite's "disk is full"."""
    import errno

    seen = 0
    while err is not None and seen < 10:
        text = str(err)
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in text \
                or "os error 28" in text or "database or disk is full" in text:
            return str(getattr(err, "filename", None) or "a file")
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def cmd_run(args) -> int:
    from align.child_processes import allow_forking

    if args.fresh_process:
        allow_forking()  # this process only checks and waits: each stage's process can be forked from it
    from align.config import load_recipe
    from align.pipeline import run_recipe

    from align.stages.online_dpo import LabelsPending

    recipe = load_recipe(args.recipe, args.overrides)
    check_datasets(recipe, recipe.stages)  # bad rows fail now, not after an hour of SFT
    try:
        run_recipe(recipe, only=args.only, start=args.start)
    except LabelsPending as waiting:  # not an error: people have pairs to judge before the run can go on
        print(f"align run: waiting for labels: {waiting}")
        return 3
    return 0


def cmd_validate(args) -> int:
    from align.config import load_recipe
    from align.pipeline import plan

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: recipe OK: '{recipe.name}', stages {' -> '.join(recipe.stages)}, "
          f"base {recipe.model.name_or_path}{' (4-bit)' if recipe.quantization.load_in_4bit else ''}")
    for line in check_datasets(recipe, recipe.stages, skip_hub=True):
        print("  " + line)
    for line in trl_setting_lines(recipe):
        print("  " + line)
    for stage, action in plan(recipe):
        print(f"  {stage}: {'will run' if action == 'run' else 'finished earlier, will be skipped'}")
    if args.accelerate_config:
        from align.config import RecipeError
        from align.sharding import accelerate_config_env, launched_sharding, sharding_problems

        try:
            env = accelerate_config_env(args.accelerate_config)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        problems = sharding_problems(recipe, recipe.stages, env)
        if problems:
            raise RecipeError(f"--accelerate-config {args.accelerate_config}:\n  " + "\n  ".join(problems))
        print(f"  launch: {args.accelerate_config} ({launched_sharding(env) or 'no parameter sharding'}): every stage "
              f"can run under it")
    return 0


def check_datasets(recipe, stages, skip_hub: bool = False) -> list[str]:
    """Read and check every dataset the stages use (the stage table says which fields hold them), then the model
    path and tokenizer and the rows' lengths, so bad input fails before the first stage trains; returns one line
    per dataset."""
    from align.data import check_lengths, load_demonstrations, load_feedback, load_preferences, load_prompts
    from align.models import is_hub_id, load_tokenizer, resolve_model_path
    from align.runs import stage_dir
    from align.stages import STAGES
    from align.trainer_settings import trl_args

    loaders = {"demonstrations": load_demonstrations, "preferences": load_preferences, "feedback": load_feedback,
               "prompts": load_prompts}
    lines, loaded = [], []
    for stage in stages:
        section = getattr(recipe, stage)
        for field, kind in STAGES[stage].datasets.items():
            source = getattr(section, field)
            if source is None:
                continue
            if source.hub and skip_hub:
                lines.append(f"{stage}.{field}: {source.describe()} (hub dataset: checked when the run loads it)")
                continue
            rows, where = loaders[kind](source)
            noun = {"preferences": "pairs", "feedback": "rated answers"}.get(kind, kind)
            lines.append(f"{stage}.{field}: {len(rows)} valid {noun} from {where}")
            if kind != "prompts" and STAGES[stage].trl_config:
                loaded.append((len(lines) - 1, stage, field, kind, rows, where))

    if skip_hub and is_hub_id(recipe.model.name_or_path):
        return lines  # `align validate` does not download a tokenizer to check lengths
    resolve_model_path(recipe.model.name_or_path)  # a missing model directory, or an unreachable hub, fails now
    tokenizer = load_tokenizer(recipe.model)
    for line, stage, field, kind, rows, where in loaded:
        max_length = trl_args(recipe, stage, stage_dir(recipe, stage)).max_length
        answers = ("chosen", "rejected") if kind == "preferences" else ("completion",)
        # RewardTrainer skips the pairs longer than max_length; the other trainers cut them.
        lengths = check_lengths(rows, tokenizer, max_length, where, answers,
                                dropped=stage == "reward" and field == "dataset")
        if max_length is not None:
            lines[line] += f"; {lengths['truncated']} longer than max_length={max_length}"
    return lines


def trl_setting_lines(recipe) -> list[str]:
    """Per trl stage, the settings that differ from trl's defaults and who set them."""
    from align.runs import stage_dir
    from align.stages import STAGES
    from align.trainer_settings import changed_from_trl_defaults, show

    lines = []
    for stage in recipe.stages:
        if not STAGES[stage].trl_config:
            continue
        changed = changed_from_trl_defaults(recipe, stage, stage_dir(recipe, stage))
        lines.append(f"{stage}: trl.{STAGES[stage].trl_config} differs from trl's defaults in {len(changed)} settings")
        lines.extend(f"    {key} = {show(value)}   (trl: {show(default)}; set by {who})"
                     for key, value, default, who in changed)
    return lines


def cmd_ls(args) -> int:
    import yaml

    from align.config import shipped_recipes

    folder = shipped_recipes()
    for path in sorted(folder.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        stages = " -> ".join(data.get("stages", []))
        print(f"{recipe_name(path, folder)}\n    {data.get('description', '').strip()}\n    [{stages}]")
    return 0


def recipe_name(path: Path, folder: Path) -> str:
    """How to name a shipped recipe to `align run` from here: its path in a checkout (recipes/gpu/gpt2.yaml),
    else its name (gpu/gpt2), which `align run` looks up among the shipped recipes."""
    from align.config import find_recipe

    relative = path.relative_to(folder)
    in_checkout = Path("recipes", relative)
    if in_checkout.is_file() and in_checkout.resolve() == path.resolve():
        return in_checkout.as_posix()
    name = relative.with_suffix("").as_posix()
    return name if find_recipe(name).resolve() == path.resolve() else str(path)  # a file named so here wins


def cmd_export(args) -> int:
    from align.run_lock import run_lock
    from align.runs import load_run_recipe

    run = Path(args.run_dir).resolve()
    load_run_recipe(run)  # a directory that is not a run fails here, before anything is locked or written
    with run_lock(run, "align export"):
        return export_run(run, args.run_dir)


def export_run(run: Path, named: str) -> int:
    from align.resources import StageResources
    from align.runs import finish_stage, is_finished, load_run_recipe, stage_dir
    from align.stages import POLICY_STAGES, STAGES

    # The run dir may have been moved, copied or renamed: read its stages from where it is now.
    recipe = load_run_recipe(run).model_copy(update={"output_root": str(run.parent), "name": run.name})
    finished = [s for s in recipe.stages if s != "export" and is_finished(stage_dir(recipe, s))]
    if not any(s in POLICY_STAGES for s in finished):
        raise FileNotFoundError(f"{named}: no finished policy stage ({', '.join(POLICY_STAGES)}) to export")
    # The recipe's stages as far as they finished: export merges the last policy stage's adapter, as the recipe's
    # own export stage does, and its model card carries every finished stage's figures.
    recipe = recipe.model_copy(update={"stages": finished + ["export"]})
    inputs = {s: stage_dir(recipe, s) for s in finished}
    out = stage_dir(recipe, "export")
    out.mkdir(parents=True, exist_ok=True)
    with StageResources() as usage:
        metrics = STAGES["export"].function()(recipe, out, inputs)
    finish_stage(out, recipe, "export", metrics, usage.seconds, inputs, usage.record())
    print(f"exported {recipe.policy_stage()} to {out / 'model'}")
    return 0


def cmd_chat(args) -> int:
    from align.chat import chat

    chat(args.model, args.system, args.max_new_tokens, args.temperature, args.top_p)
    return 0


def cmd_eval(args) -> int:
    from align.compare_models import compare, default_against, slug

    against = args.against or default_against(args.target)
    if args.out:
        out = Path(args.out)
    elif (Path(args.target) / "recipe.yaml").is_file():
        out = Path(args.target) / f"compare-{slug(against)}"
    else:
        out = Path("evals") / f"{slug(args.target)}-vs-{slug(against)}"
    compare(args.target, against, args.reward, args.dataset, args.max_prompts, args.max_new_tokens, out, args.human)
    return 0


def cmd_report(args) -> int:
    from align.report import write_report

    run = Path(args.run_dir)
    if not (run / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{args.run_dir}: not a run directory (no recipe.yaml)")
    print(f"wrote {write_report(run)}")
    return 0


def cmd_env(args) -> int:
    from align.models import on_gpu, torch_dtype
    from align.runs import versions

    for key, value in versions().items():
        if value is None:  # run directories record None; a person reads what it means
            value = "no CUDA device" if key == "cuda" else "not installed"
        elif key == "cpu":  # what `dtype: auto` becomes here: bf16 only where it is not emulated (align.models)
            value = (f"{value['isa']} (native bf16: {'yes' if value['bf16_native'] else 'no'}) -> auto dtype "
                     f"{str(torch_dtype('auto')).removeprefix('torch.')}{' (on the GPU)' if on_gpu() else ''}")
        print(f"{key:>13}: {value}")
    return 0


class MissingExtra(RuntimeError):
    """An optional part of align (the web app) whose libraries are not installed."""


def serving_module():
    """The web app lives in ui/ (which imports align, never the reverse at import time): the CLI is the one
    place that reaches it, and only when asked to serve."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise MissingExtra("the labelling app needs the ui extra: pip install 'align[ui]' (gradio is not installed)")
    return importlib.import_module("align.ui.serve")


def cmd_label(args) -> int:
    return serving_module().label(args)


def cmd_arena(args) -> int:
    return serving_module().arena(args)


def cmd_feedback(args) -> int:
    return serving_module().feedback(args)


def cmd_labels(args) -> int:
    import json

    from align.labelling.store import LabelError, LabelStore

    if args.labels_command == "add-user":
        import getpass

        from align.labelling.accounts import add_account

        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass(f"password for {args.name}: ")
        add_account(args.users_file, args.name, password, admin=args.admin)
        print(f"added {'admin ' if args.admin else ''}{args.name} to {args.users_file}")
        return 0
    if args.labels_command == "check":
        from align.labelling.store import check_database

        report = check_database(args.db)
        print(f"{args.db}: integrity ok; " + ", ".join(f"{table} {n}" for table, n in report["rows"].items()))
        return 0
    if args.labels_command == "judge":
        from align.labeller import label_as_annotators, per_pair
        from align.reward_functions import RewardFunctionError, load_labeller

        if not 0 <= args.noise <= 0.5:
            raise LabelError(f"--noise {args.noise}: give a share of labels between 0 and 0.5")
        if not 1 <= args.labels_per_pair <= 5:
            raise LabelError(f"--labels-per-pair {args.labels_per_pair}: give 1 to 5 labels per pair")
        store = LabelStore(args.db, create=False)  # a missing or foreign file is refused before anything is judged
        sources = store.sources()
        store.close()
        if args.source is not None and args.source not in sources:
            raise LabelError(f"--source {args.source!r}: no pairs in {args.db} were queued from it; its sources: "
                             + ", ".join(repr(s) for s in sources[:20]) + (" ..." if len(sources) > 20 else ""))
        try:
            labeller = load_labeller(args.labeller)
            counts = label_as_annotators(args.db, labeller, args.annotator, args.seed, args.labels_per_pair,
                                         source=args.source, noise=args.noise)
        except RewardFunctionError as err:
            raise LabelError(f"--labeller {args.labeller}: {err}") from err
        done = (f"judged {counts['labelled']} pairs" if args.labels_per_pair == 1 else
                f"gave {counts['labelled']} labels as {args.labels_per_pair} annotators")
        print(f"{args.annotator} ({args.labeller}, noise {args.noise:g}{per_pair(args.labels_per_pair)}) {done} in "
              f"{args.db}" + (f" queued from {args.source}" if args.source else "")
              + f": A {counts['A']}, B {counts['B']}, tie {counts['tie']}, both bad {counts['both_bad']} "
              f"({counts['flipped']} flipped)")
        return 0
    store = LabelStore(args.db, create=False)
    if args.labels_command == "backup":
        report = store.backup(args.out, overwrite=args.force)
        print(f"backed up {args.db} to {args.out}: integrity ok; "
              + ", ".join(f"{table} {n}" for table, n in report["rows"].items()))
        return 0
    judgments = store.judgments()
    if args.labels_command == "stats":
        from align.labelling.stats import feedback_report, format_feedback, format_report, label_report

        report = label_report(judgments)
        feedback = feedback_report(store.replies())
        if args.json:
            print(json.dumps({"counts": store.counts(), **report, "feedback": feedback}, indent=2))
        else:
            counts = store.counts()
            print(f"{args.db}: {counts['items']} pairs, {counts['arena_rounds']} arena rounds, "
                  f"{counts['judgments']} judgments ({counts['undone']} undone), {counts['replies']} chat replies "
                  f"({counts['rated']} rated, {counts['corrected']} corrected)\n")
            print(format_report(report))
            print(format_feedback(feedback))
        return 0
    rows = export_rows(store, args.kind, keep_ties=args.keep_ties, majority=args.majority)
    if not rows:
        replies = len(store.replies())
        hint = "; chat feedback goes out with --kind ratings or --kind corrections" if replies and args.kind == "pairs" \
            else ""
        raise LabelError(f"{args.db}: nothing to export yet ({len(judgments)} judgments, {replies} chat replies, none "
                         f"usable as {EXPORT_KINDS[args.kind][0]}){hint}")
    out = Path(args.out)
    if args.format == "hf":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(out))
    else:
        from align.runs import write_text_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    noun, stages = EXPORT_KINDS[args.kind]
    direct = "" if args.kind == "winners" else f", or use labels: {args.db}"  # labels: gives sft the corrections
    print(f"wrote {len(rows)} {noun} to {out}: a dataset for {stages} (give its path{direct})")
    return 0


def export_rows(store, kind: str, keep_ties: bool = False, majority: bool = False) -> list[dict]:
    """A label database's labels in the layout of the stages that train on them: pairs are the A/B judgments as
    prompt/chosen/rejected (`labels: DB` adds a correction-over-reply pair per correction); ratings are the KTO rows
    prompt/completion/label that `labels: DB` gives kto (a correction is a wanted answer too); corrections are SFT
    rows, the conversation with the corrected answer as `messages`; winners are SFT rows too, each prompt's best
    judged answer (best-of-n distillation)."""
    from align.labelling.store import LabelError, feedback_training_rows, preference_rows, winner_rows

    if kind != "pairs":
        if keep_ties or majority:
            raise LabelError("--keep-ties and --majority choose among A/B judgments: they go with --kind pairs")
        if kind == "winners":
            return winner_rows(store.judgments())
        rows = feedback_training_rows(store.replies(), "feedback" if kind == "ratings" else "demonstrations")
        if kind == "corrections":
            return [{"messages": r.pop("prompt") + r.pop("completion"), **r} for r in rows]
        return [{"prompt": r.pop("prompt"), "completion": r.pop("completion"), "label": r.pop("label"), **r}
                for r in rows]
    return preference_rows(store.judgments(), keep_ties=keep_ties, majority=majority)


COMMANDS = {
    "run": cmd_run, "validate": cmd_validate, "ls": cmd_ls, "export": cmd_export, "chat": cmd_chat, "env": cmd_env,
    "label": cmd_label, "arena": cmd_arena, "feedback": cmd_feedback, "labels": cmd_labels, "report": cmd_report, "eval": cmd_eval,
}

if __name__ == "__main__":
    raise SystemExit(main())
