"""Recipe schema, references, overrides, stage checks, and the shipped recipes (validated through the CLI)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

import align.cli
from align.config import (
    EMBEDDED_MODEL,
    DataSource,
    Recipe,
    RecipeError,
    apply_overrides,
    load_recipe,
    parse_recipe,
    recipe_to_yaml,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RECIPES = sorted((REPO_ROOT / "recipes").glob("**/*.yaml"))


def minimal(**extra) -> dict:
    """The smallest valid recipe: one SFT stage on the bundled demonstrations."""
    return {"name": "t", "stages": ["sft"], "sft": {"dataset": "bundled:sft"}, **extra}


def full(**extra) -> dict:
    """Every stage, every training section present."""
    return {
        "name": "full",
        "stages": ["sft", "reward", "dpo", "eval", "export"],
        "sft": {"dataset": "bundled:sft"},
        "reward": {"dataset": "bundled:prefs_train"},
        "dpo": {"dataset": "bundled:prefs_train"},
        **extra,
    }


def error_of(tree: dict) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(tree)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ parsing


def test_minimal_recipe_parses_with_defaults():
    recipe = parse_recipe(minimal())
    assert isinstance(recipe, Recipe)
    assert recipe.name == "t"
    assert recipe.stages == ["sft"]
    assert recipe.seed == 42
    assert recipe.output_root == "runs"
    assert recipe.model.name_or_path == EMBEDDED_MODEL
    assert recipe.model.dtype == "auto"
    assert recipe.quantization.load_in_4bit is False
    assert recipe.lora.r == 16 and recipe.lora.alpha == 32 and recipe.lora.target_modules == "all-linear"
    assert recipe.sft.dataset == DataSource(bundled="sft")
    assert recipe.sft.eval_dataset is None
    assert recipe.sft.trl_args == {}
    assert recipe.reward is None and recipe.dpo is None
    assert recipe.eval.dataset.bundled == "prefs_test"
    assert recipe.eval.baseline == "sft"
    assert recipe.export.dtype == "float32"
    assert recipe.policy_stage() == "sft"


def test_full_recipe_policy_stage_is_last_policy_stage():
    recipe = parse_recipe(full())
    assert recipe.policy_stage() == "dpo"


def test_resolved_yaml_round_trips_with_defaults():
    recipe = parse_recipe(minimal(sft={"dataset": "bundled:sft", "learning_rate": 1e-3}))
    dumped = yaml.safe_load(recipe_to_yaml(recipe))
    assert dumped["lora"]["r"] == 16
    assert dumped["model"]["name_or_path"] == EMBEDDED_MODEL
    assert dumped["sft"]["learning_rate"] == pytest.approx(1e-3)
    assert parse_recipe(dumped) == recipe


def test_recipe_must_be_a_mapping():
    with pytest.raises(RecipeError, match="mapping"):
        parse_recipe(["sft"])  # type: ignore[arg-type]


def test_name_and_stages_are_required():
    message = error_of({"sft": {"dataset": "bundled:sft"}})
    assert "name" in message and "stages" in message


# ------------------------------------------------------------------------------------------------ unknown keys


@pytest.mark.fault("bad input")
@pytest.mark.parametrize(
    ("tree", "location"),
    [
        (minimal(bogus=1), "bogus: unknown key"),
        (minimal(model={"nme": "x"}), "model.nme: unknown key"),
        (minimal(lora={"rank": 8}), "lora.rank: unknown key"),
        (minimal(quantization={"load_in_8bit": True}), "quantization.load_in_8bit: unknown key"),
        (minimal(eval={"max_prompt": 3}), "eval.max_prompt: unknown key"),
        (minimal(sft={"dataset": {"bundled": "sft", "shuffle": True}}), "sft.dataset.shuffle: unknown key"),
    ],
)
def test_unknown_keys_name_their_path(tree, location):
    assert location in error_of(tree)


def test_misspelt_trl_key_is_refused_with_suggestion():
    message = error_of(minimal(sft={"dataset": "bundled:sft", "learnin_rate": 1e-4}))
    assert "sft" in message
    assert "learnin_rate" in message
    assert "did you mean" in message and "learning_rate" in message.split("did you mean", 1)[1]


def test_unknown_trl_key_in_dpo_names_dpo_config():
    message = error_of(full(dpo={"dataset": "bundled:prefs_train", "betta": 0.1}))
    assert "dpo" in message and "betta" in message and "DPOConfig" in message
    assert "beta" in message.split("did you mean", 1)[1]


@pytest.mark.fault("bad input")
@pytest.mark.parametrize(
    ("tree", "location", "meant"),
    [
        # a typo of our own field in a stage section: not "kto.dataset: Field required"
        ({"name": "t", "stages": ["kto"], "kto": {"datset": "x.jsonl"}}, "kto.datset: unknown key", "dataset"),
        (minimal(sft={"datset": "bundled:sft"}), "sft.datset: unknown key", "dataset"),
        (minimal(eval={"max_promts": 3}), "eval.max_promts: unknown key", "max_prompts"),
        (minimal(sft={"dataset": {"bundled": "sft", "lmit": 3}}), "sft.dataset.lmit: unknown key", "limit"),
        (minimal(kot={"beta": 0.1}), "kot: unknown key", "kto"),
        (full(reward={"dataset": "bundled:prefs_train", "judge_labelled_pairs": {"judg": "x"}}),
         "reward.judge_labelled_pairs.judg: unknown key", "judge"),
    ],
    ids=["kto.datset", "sft.datset", "eval.max_promts", "sft.dataset.lmit", "kot", "judge_labelled_pairs.judg"],
)
def test_a_misspelt_section_key_gets_did_you_mean(tree, location, meant):
    message = error_of(tree)
    assert location in message
    assert meant in message.split(location, 1)[1].split("\n")[0].split("did you mean", 1)[1]


# ------------------------------------------------------------------------------------------------ types


def test_wrong_type_in_lora_names_field():
    message = error_of(minimal(lora={"r": "big"}))
    assert "lora.r" in message
    assert "integer" in message


@pytest.mark.parametrize("bad", [0, -4])
def test_lora_rank_must_be_positive(bad):
    assert "lora.r" in error_of(minimal(lora={"r": bad}))


def test_wrong_type_in_trl_key_names_field():
    message = error_of(minimal(sft={"dataset": "bundled:sft", "learning_rate": "abc"}))
    assert "sft" in message and "learning_rate" in message and "'abc'" in message


def test_wrong_literal_names_field():
    assert "model.dtype" in error_of(minimal(model={"dtype": "int8"}))


def test_unknown_stage_name_refused():
    assert "stages" in error_of(minimal(stages=["train"]))


# ------------------------------------------------------------------------------------------------ TRL keys


def test_trl_keys_are_coerced_and_passed_through():
    recipe = parse_recipe(
        minimal(
            sft={
                "dataset": "bundled:sft",
                "learning_rate": "2e-4",  # YAML 1.1 reads 2e-4 without a dot as a string
                "num_train_epochs": "3",
                "bf16": "true",
                "max_length": 128,
                "per_device_train_batch_size": 4,
            }
        )
    )
    args = recipe.sft.trl_args
    assert args == {
        "learning_rate": 2e-4,
        "num_train_epochs": 3.0,
        "bf16": True,
        "max_length": 128,
        "per_device_train_batch_size": 4,
    }
    assert isinstance(args["learning_rate"], float)
    assert isinstance(args["num_train_epochs"], float)
    assert args["bf16"] is True
    # our own fields are not TRL arguments
    assert "dataset" not in args and "eval_dataset" not in args


def test_trl_args_are_per_stage():
    recipe = parse_recipe(full(dpo={"dataset": "bundled:prefs_train", "beta": 0.25}))
    assert recipe.dpo.trl_args == {"beta": 0.25}
    assert recipe.sft.trl_args == {}
    assert recipe.reward.trl_args == {}


def test_checking_trl_settings_leaves_the_environment_alone_and_training_points_tensorboard_at_the_stage(
        tmp_path, monkeypatch):
    import os

    from align.trainer_settings import trainer_args, trl_args

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    recipe = parse_recipe(full())
    trl_args(recipe, "sft", tmp_path / "sft")  # what `align validate` and the pipeline's checks do
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    assert trainer_args(recipe, "sft", tmp_path / "sft").output_dir == str(tmp_path / "sft" / "checkpoints")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "sft" / "tensorboard")


def test_checkpointing_takes_the_old_or_the_new_name_without_a_warning(tmp_path):
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing and warns on every run that sets
    the old name (trl's configs do, by default); a recipe may use either, and the run prints no warning."""
    import warnings

    from align.trainer_settings import trl_args

    for settings, expected in (({}, False), ({"gradient_checkpointing": True}, True),
                               ({"activation_checkpointing": True}, True)):
        recipe = parse_recipe(full(sft={"dataset": "bundled:sft", **settings}))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args = trl_args(recipe, "sft", tmp_path)
        assert args.activation_checkpointing is expected and args.gradient_checkpointing is expected, settings
    both = parse_recipe(full(sft={"dataset": "bundled:sft", "gradient_checkpointing": True,
                                  "activation_checkpointing": False}))
    with pytest.raises(RecipeError, match="one setting"):
        trl_args(both, "sft", tmp_path)


def test_stage_without_dataset_refused():
    assert "sft.dataset" in error_of({"name": "t", "stages": ["sft"], "sft": {"learning_rate": 1e-4}})


@pytest.mark.parametrize("key", ["output_dir", "seed", "data_seed"])
def test_reserved_trl_keys_refused(key):
    message = error_of(minimal(sft={"dataset": "bundled:sft", key: "x" if key == "output_dir" else 1}))
    assert f"'{key}' is set by align" in message
    assert "sft" in message


# ------------------------------------------------------------------------------------------------ references


def test_whole_string_reference_keeps_type():
    recipe = parse_recipe(
        full(
            sft={"dataset": "bundled:sft", "max_length": 256},
            dpo={"dataset": "bundled:prefs_train", "max_length": "${sft.max_length}"},
        )
    )
    assert recipe.dpo.trl_args["max_length"] == 256
    assert type(recipe.dpo.trl_args["max_length"]) is int


def test_whole_string_reference_to_top_level_int():
    recipe = parse_recipe(minimal(seed=7, export={"check_new_tokens": "${seed}"}))
    assert recipe.export.check_new_tokens == 7


def test_embedded_reference_substitutes_into_string():
    recipe = parse_recipe(minimal(name="run", description="${name} with r=${lora.r}", lora={"r": 4}))
    assert recipe.description == "run with r=4"


def test_references_resolve_through_references():
    recipe = parse_recipe(minimal(seed="${lora.r}", lora={"r": 8}, export={"check_new_tokens": "${seed}"}))
    assert recipe.seed == 8 and recipe.export.check_new_tokens == 8


def test_missing_reference_names_location():
    message = error_of(
        minimal(model={"dtype": "auto"}, sft={"dataset": "bundled:sft", "max_length": "${model.max_len}"})
    )
    assert "sft.max_length" in message
    assert "${model.max_len}" in message
    assert "'max_len' is missing" in message


def test_missing_embedded_reference_names_location():
    message = error_of(minimal(description="about ${nothing}"))
    assert "description" in message and "${nothing}" in message


def test_reference_cycle_is_an_error():
    message = error_of(minimal(description="${output_root}", output_root="${description}"))
    assert "cycle" in message


# ------------------------------------------------------------------------------------------------ overrides


def test_apply_overrides_parses_values_as_yaml_and_does_not_mutate():
    tree = minimal()
    out = apply_overrides(
        tree, ["sft.num_train_epochs=2", "lora.target_modules=[q_proj, v_proj]", "quantization.load_in_4bit=true"]
    )
    assert out["sft"]["num_train_epochs"] == 2
    assert out["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert out["quantization"]["load_in_4bit"] is True
    assert tree == minimal()  # the input is left alone


def test_override_value_may_contain_equals_sign():
    out = apply_overrides(minimal(), ["description=a=b"])
    assert out["description"] == "a=b"


def test_override_into_shorthand_dataset():
    tree = full()
    out = apply_overrides(tree, ["dpo.dataset.limit=16"])
    assert out["dpo"]["dataset"] == {"bundled": "prefs_train", "limit": 16}
    recipe = parse_recipe(out)
    assert recipe.dpo.dataset == DataSource(bundled="prefs_train", limit=16)
    assert recipe.reward.dataset.limit is None


def test_override_without_equals_is_an_error():
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_overrides(minimal(), ["sft.num_train_epochs"])


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(RecipeError, match="'name' is not a section"):
        apply_overrides(minimal(), ["name.x=1"])


def test_override_of_unknown_key_fails_validation():
    with pytest.raises(RecipeError, match="lora.rank: unknown key"):
        parse_recipe(apply_overrides(minimal(), ["lora.rank=4"]))


def write_recipe(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_load_recipe_with_overrides(tmp_path):
    path = write_recipe(tmp_path, full(dpo={"dataset": "bundled:prefs_train", "max_length": "${sft.max_length}"},
                                       sft={"dataset": "bundled:sft", "max_length": 64}))
    recipe = load_recipe(path, ["sft.num_train_epochs=2", "dpo.dataset.limit=16", "sft.max_length=32"])
    assert recipe.sft.trl_args["num_train_epochs"] == 2
    assert recipe.dpo.dataset == DataSource(bundled="prefs_train", limit=16)
    # overrides are applied before references are resolved
    assert recipe.dpo.trl_args["max_length"] == 32
    # and without overrides the file's values stand
    plain = load_recipe(path)
    assert plain.sft.trl_args == {"max_length": 64}
    assert plain.dpo.dataset.limit is None


QUICKSTART = REPO_ROOT / "recipes" / "quickstart.yaml"  # stages sft, reward, online_dpo, eval, export


@pytest.mark.fault("bad input")
@pytest.mark.parametrize(
    ("overrides", "refused", "suggested"),
    [
        # its own section is complete, but the recipe never runs it: no longer ignored in silence
        (["kto.dataset=bad.jsonl"], "'kto.dataset=bad.jsonl'", "'stages=[sft,reward,kto,online_dpo,eval,export]',"),
        # not "dpo.dataset: Field required"
        (["dpo.beta=0.2"], "'dpo.beta=0.2'", "'stages=[sft,reward,dpo,online_dpo,eval,export]' dpo.dataset=...,"),
        (["sft.num_train_epochs=2", "ppo.steps=3", "ppo.kl_coef=0.1"], "'ppo.steps=3', 'ppo.kl_coef=0.1'",
         "'stages=[sft,reward,online_dpo,ppo,eval,export]' ppo.dataset=...,"),
        (["stages=[sft,reward]", "eval.max_prompts=3"], "'eval.max_prompts=3'", "'stages=[sft,reward,eval]',"),
    ],
    ids=["kto.dataset", "dpo.beta", "ppo.steps", "eval after stages="],
)
def test_an_override_of_a_stage_the_recipe_does_not_run_is_refused(overrides, refused, suggested):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, overrides)
    message = str(info.value)
    stage = refused.strip("'").split(".")[0]
    stages = "[sft, reward]" if "stages=[sft,reward]" in overrides else "[sft, reward, online_dpo, eval, export]"
    assert f"override {refused}: the recipe does not run stage '{stage}' (its stages are {stages})" in message
    assert f"on the command line with {suggested} or to stages: in the YAML" in message


def test_the_suggested_stages_override_adds_the_stage():
    with pytest.raises(RecipeError, match=r"'stages=\[sft,reward,dpo,online_dpo,eval,export\]' dpo.dataset=\.\.\."):
        load_recipe(QUICKSTART, ["dpo.beta=0.2"])
    recipe = load_recipe(QUICKSTART, ["stages=[sft,reward,dpo,online_dpo,eval,export]",
                                      "dpo.dataset=bundled:prefs_train", "dpo.beta=0.2"])
    assert "dpo" in recipe.stages and recipe.dpo.trl_args["beta"] == 0.2


def test_load_recipe_errors_name_the_file(tmp_path):
    path = write_recipe(tmp_path, minimal(bogus=1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "bogus" in str(info.value)


def test_load_recipe_bad_override(tmp_path):
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(write_recipe(tmp_path, minimal()), ["oops"])


def test_load_recipe_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_load_recipe_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


# ------------------------------------------------------------------------------------------------ stages


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (full(stages=["reward", "sft"]), "must follow the order"),
        (full(stages=["dpo", "sft"]), "must follow the order"),
        (full(stages=["sft", "sft"]), "at most once"),
        (full(stages=[]), "at least one stage"),
        ({"name": "t", "stages": ["sft", "dpo"], "sft": {"dataset": "bundled:sft"}}, "no 'dpo:' section"),
        ({"name": "t", "stages": ["reward"]}, "no 'reward:' section"),
        (full(stages=["sft", "dpo", "eval"]), "add 'reward'"),
        (full(stages=["reward", "eval"]), "add 'sft' or 'dpo'"),
        (full(stages=["reward", "export"]), "add 'sft' or 'dpo'"),
        (full(stages=["sft", "reward", "eval"]), "eval.baseline"),
        (full(stages=["reward", "dpo", "eval"]), "eval.baseline"),
    ],
    ids=[
        "reward-before-sft", "dpo-before-sft", "duplicate", "empty", "dpo-without-section",
        "reward-without-section", "eval-without-reward", "eval-without-policy", "export-without-policy",
        "baseline-sft-without-dpo", "baseline-sft-without-sft",
    ],
)
@pytest.mark.fault("bad input")
def test_impossible_stage_lists_are_refused(tree, expected):
    assert expected in error_of(tree)


@pytest.mark.parametrize(
    "stages",
    [
        ["sft"],
        ["reward"],
        ["sft", "export"],
        ["dpo", "export"],
        ["sft", "dpo"],
        ["sft", "reward", "dpo", "eval", "export"],
    ],
)
def test_possible_stage_lists_are_accepted(stages):
    assert parse_recipe(full(stages=stages)).stages == stages


def test_eval_baseline_base_needs_only_one_policy_stage():
    recipe = parse_recipe(full(stages=["reward", "dpo", "eval"], eval={"baseline": "base"}))
    assert recipe.eval.baseline == "base"
    assert parse_recipe(full(stages=["sft", "reward", "eval"], eval={"baseline": "base"})).policy_stage() == "sft"


def test_unused_sections_are_allowed():
    """A section whose stage is not listed is kept (e.g. switched off for one run) but not required."""
    recipe = parse_recipe(full(stages=["sft"]))
    assert recipe.dpo is not None and recipe.stages == ["sft"]


# ------------------------------------------------------------------------------------------------ data sources


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bundled:sft", DataSource(bundled="sft")),
        ("hub:foo/bar", DataSource(hub="foo/bar")),
        ("data/train.jsonl", DataSource(path="data/train.jsonl")),
        ("/abs/prefs.parquet", DataSource(path="/abs/prefs.parquet")),
        ("hubble.jsonl", DataSource(path="hubble.jsonl")),  # a prefix without ':' is a path
    ],
)
def test_data_source_shorthand(text, expected):
    source = DataSource.model_validate(text)
    assert source == expected
    assert source.split == "train" and source.limit is None


def test_data_source_shorthand_in_recipe():
    recipe = parse_recipe(minimal(sft={"dataset": "hub:foo/bar", "eval_dataset": "my/file.jsonl"}))
    assert recipe.sft.dataset.hub == "foo/bar"
    assert recipe.sft.eval_dataset.path == "my/file.jsonl"


def test_data_source_describe():
    assert DataSource(path="a.jsonl").describe() == "a.jsonl"
    assert DataSource(hub="foo/bar", split="test").describe() == "hub:foo/bar[test]"
    assert DataSource(bundled="sft").describe() == "bundled:sft"


@pytest.mark.parametrize(
    "value",
    [
        {"path": "a.jsonl", "bundled": "sft"},
        {"hub": "x/y", "bundled": "sft"},
        {"path": "a.jsonl", "hub": "x/y", "bundled": "sft"},
        {"split": "train"},
        {},
    ],
)
def test_data_source_exactly_one_of(value):
    message = error_of(minimal(sft={"dataset": value}))
    assert "sft.dataset" in message
    assert "exactly one of path, hub, bundled" in message


def test_data_source_limit_must_be_positive():
    assert "sft.dataset.limit" in error_of(minimal(sft={"dataset": {"bundled": "sft", "limit": 0}}))


# ------------------------------------------------------------------------------------------------ run name


@pytest.mark.parametrize("name", ["a/b", "../up", "", "-dash", "has space", ".hidden"])
def test_invalid_run_name_refused(name):
    message = error_of(minimal(name=name))
    assert "name:" in message and "letters, digits" in message


@pytest.mark.parametrize("name", ["quickstart", "qwen2.5-1.5b_dpo", "A1"])
def test_valid_run_names(name):
    assert parse_recipe(minimal(name=name)).name == name


# ------------------------------------------------------------------------------------------------ shipped recipes / CLI


def test_shipped_recipes_exist():
    assert SHIPPED_RECIPES, f"no recipes found under {REPO_ROOT / 'recipes'}"
    assert REPO_ROOT / "recipes" / "quickstart.yaml" in SHIPPED_RECIPES


@pytest.mark.parametrize("path", SHIPPED_RECIPES, ids=[str(p.relative_to(REPO_ROOT)) for p in SHIPPED_RECIPES])
def test_shipped_recipe_validates(path, tmp_path, monkeypatch, capsys):
    first_line = path.read_text().splitlines()[0]
    command = f"# align run {path.relative_to(REPO_ROOT).as_posix()}"
    launched = first_line.startswith("# accelerate launch ") and first_line.endswith(f"-m align run {command[12:]}")
    assert first_line.startswith(command) or launched, f"{path}: first line should be {command!r}, got {first_line!r}"
    # Run from an empty directory so that run directories left over in the checkout do not affect the plan.
    monkeypatch.chdir(tmp_path)
    assert align.cli.main(["validate", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "recipe OK" in out
    for stage in yaml.safe_load(path.read_text())["stages"]:
        assert f"  {stage}: will run" in out
    assert not (tmp_path / "runs").exists(), "validate must not create run directories"


def test_validate_missing_recipe(capsys):
    assert align.cli.main(["validate", "nonexistent.yaml"]) == 2
    captured = capsys.readouterr()
    assert "error" in captured.err
    assert "nonexistent.yaml" in captured.err and "not found" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_validate_invalid_recipe_exits_2(tmp_path, capsys):
    path = write_recipe(tmp_path, minimal(lora={"r": "big"}))
    assert align.cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lora.r" in err and str(path) in err


def test_validate_applies_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, minimal())
    assert align.cli.main(["validate", str(path), "sft.dataset.limit=10"]) == 0
    assert "sft.dataset: 10 valid demonstrations from bundled:sft" in capsys.readouterr().out


def test_validate_prints_the_trl_settings_align_and_the_recipe_changed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, minimal(sft={"dataset": "bundled:sft", "learning_rate": 3e-4}))
    assert align.cli.main(["validate", str(path), "sft.num_train_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "sft: trl.SFTConfig differs from trl's defaults" in out
    assert "num_train_epochs = 2.0   (trl: 3.0; set by recipe)" in out
    assert "learning_rate = 0.0003   (trl: 2e-05; set by recipe)" in out
    assert "logging_steps = 5   (trl: 10; set by align)" in out  # align.config.TRL_DEFAULTS
    assert "train_sampling_strategy = group_by_length   (trl: random; set by align)" in out  # the stage table's
    assert "per_device_train_batch_size" not in out  # align's 8 is trl's default too


def test_the_stage_table_describes_every_stage_consistently():
    """One entry per stage: its section in the recipe schema, an importable run function, a real trl config
    class, reads only of stages listed before it, and dataset fields its section has."""
    import trl

    from align.config import Recipe
    from align.stages import POLICY_STAGES, STAGES

    names = list(STAGES)
    assert names == list(typing.get_args(typing.get_args(Recipe.model_fields["stages"].annotation)[0]))
    for name, stage in STAGES.items():
        assert name in Recipe.model_fields, name
        assert callable(stage.function()), name
        assert all(names.index(earlier) < names.index(name) for earlier in stage.reads), name
        section = Recipe.model_fields[name].annotation
        section = next(t for t in typing.get_args(section) or (section,) if t is not type(None))
        for field, kind in stage.datasets.items():
            assert field in section.model_fields and kind in ("demonstrations", "preferences", "feedback", "prompts"), name
        if stage.trl_config:
            assert getattr(trl, stage.trl_config) and section.trl_config_name == stage.trl_config, name
            assert not set(stage.trl_defaults) - {f.name for f in dataclasses.fields(getattr(trl, stage.trl_config))}
        assert not stage.produces_policy or stage.every_process, f"{name}: a policy is trained on every process"
    assert set(STAGES["export"].reads) == set(POLICY_STAGES)


def test_validate_reports_bad_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    path = write_recipe(tmp_path, minimal(sft={"dataset": str(data)}))
    assert align.cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "row 1" in err and "completion" in err


def test_ls_lists_quickstart(capsys):
    assert align.cli.main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "recipes/quickstart.yaml" in out
    quickstart = yaml.safe_load((REPO_ROOT / "recipes" / "quickstart.yaml").read_text())
    assert f"[{' -> '.join(quickstart['stages'])}]" in out
    for path in SHIPPED_RECIPES:
        assert str(path.relative_to(REPO_ROOT)) in out
