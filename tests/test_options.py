"""Every option declared once (rnn_mnist/options.py, config.py): the parsers, the refusals and the
resume rules come from the declarations, and the recipes in configs/ are read by --config."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass

import pytest
import torch
from conftest import REPO, tiny_train_args
from conftest import run_main as run_script_main

import evaluate
import train
from rnn_mnist import resume, tasks, training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.cli import positive_int
from rnn_mnist.config import TrainConfig, eval_options, train_options
from rnn_mnist.data import DataConfig
from rnn_mnist.models import ModelConfig
from rnn_mnist.options import CONFIGS_DIR, add_options, option, options_of, read_recipe, refusals, when
from rnn_mnist.parsers import parse_train_flags

FAST = (
    "--context --context-rows 3 --context-width 7 --position --precision fp32 --lr-schedule cosine "
    "--lr 8e-3 --warmup-batches 200 --epochs 6"
)


# The benchmark recipe's model and schedule but its epochs (issue 22).
BENCH = (
    "--binarize dynamic --context --context-rows 7 --context-width 15 --position --head-hidden 256 "
    "--precision fp32 --lr-schedule cosine --lr 8e-3 --warmup-batches 200"
)
SMNIST = (
    "--task classify --hidden 128 --lr 2e-3 --lr-schedule cosine --warmup-batches 200 --clip 1 "
    "--batch-size 128 --epochs 20"
)


# Each recipe as the typed flags it stands for (the README's command lines before recipes were files).
RECIPES = {
    "fast": FAST,
    "fast-label": FAST + " --condition label",
    "ctx-10ep": "--context --position --epochs 10 --lr-milestones 7,9 --lr-gamma 0.3",
    "smnist": SMNIST,
    "psmnist": SMNIST + " --permute",
    "bench-quick": BENCH + " --epochs 5",
    "bench-long": BENCH + " --epochs 9",
    "bench-gru256": BENCH + " --hidden-size 256 --epochs 6",
    "bench-gru384": BENCH + " --hidden-size 384 --epochs 7",
}


def parse(argv: list[str]) -> tuple[dict, set[str]]:
    return parse_train_flags(train.build_parser(), ["--exp-name", "x", *argv])


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


BAD_RECIPES = [
    ("hiden = 64\n", ["hiden", "not an option"]),
    ("hidden_size = 64\n", ["hidden_size", "did you mean hidden-size"]),
    ("lr = 2.0\n", ["lr", "(0, 1]"]),  # the flag's own range
    ("epochs = 1.5\n", ["epochs", "integer"]),
    ("context = 'yes'\n", ["context", "true or false"]),
    ("lr-schedule = 'linear'\n", ["lr-schedule", "'linear'"]),
    ("exp-name = 'x'\n", ["exp-name", "not an option a recipe can set"]),
    ("lr = \n", ["not valid TOML"]),
    ("lr-schedule = 'cosine'\nlr-milestones = [3]\n", ["--lr-milestones", "step only"]),  # contradicts itself
    ("task = 'classify'\nbinarize = 'static'\n", ["--binarize", "grey levels"]),  # issue 23, finding 9
]


def test_every_recipe_in_configs_is_checked_here():
    assert {path.stem for path in CONFIGS_DIR.glob("*.toml")} == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_parses_into_the_values_of_its_typed_flags(name):
    from_file, typed = parse(["--config", name])
    typed_out, _ = parse(RECIPES[name].split())
    assert {k: v for k, v in from_file.items() if k != "preset"} == {
        k: v for k, v in typed_out.items() if k != "preset"
    }
    assert from_file["preset"] == name and typed == {"exp_name", "preset"}  # the file's values: not typed
    assert from_file != parse([])[0]  # the recipe changed something


def test_the_path_and_the_old_preset_flag_read_the_same_recipe():
    by_name, _ = parse(["--config", "fast"])
    by_path, _ = parse(["--config", str(CONFIGS_DIR / "fast.toml")])
    by_preset, _ = parse(["--preset", "fast"])
    assert by_preset == by_name
    assert {**by_path, "preset": "fast"} == by_name


def test_typed_flags_override_a_recipe():
    flags, typed = parse(["--config", "fast", "--lr", "1e-3", "--context-rows", "2", "--epochs", "1"])
    assert (flags["lr"], flags["context_rows"], flags["epochs"]) == (1e-3, 2, 1)
    assert flags["context_width"] == 7 and flags["lr_schedule"] == "cosine"  # still the recipe's
    assert typed == {"exp_name", "preset", "lr", "context_rows", "epochs"}


def test_a_recipe_by_bare_name_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    flags, _ = parse(["--config", "ctx-10ep"])
    assert flags["lr_milestones"] == (7, 9) and flags["lr_gamma"] == 0.3


@pytest.mark.parametrize("text, needles", BAD_RECIPES, ids=[text.strip() for text, _ in BAD_RECIPES])
def test_a_bad_recipe_is_one_line_naming_the_file_and_key(tmp_path, mnist_dir, capsys, text, needles):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    args = tiny_train_args(tmp_path, mnist_dir, "bad", "--config", str(recipe))
    code, err = run_script_main(train.main, args, capsys)
    assert_one_line_error(code, err, str(recipe), *needles)
    assert not (tmp_path / "bad").exists()


def test_an_unknown_recipe_is_one_line_listing_the_shipped_ones(tmp_path, mnist_dir, capsys):
    code, err = run_script_main(
        train.main, tiny_train_args(tmp_path, mnist_dir, "x", "--config", "fats"), capsys
    )
    assert_one_line_error(code, err, "--config", "'fats'", "fast-label")


def test_a_shortened_pilot_says_it_spends_its_run_warming_up(tmp_path, mnist_dir, capsys):
    # The fixture's 80 training digits make 3 batches: the recipe's 200 warm-up batches exceed the run.
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "pilot", "--config", "fast", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "--warmup-batches 200" in line]
    assert len(notes) == 1 and "half of this run's 3 batches" in notes[0]
    assert notes[0] in (tmp_path / "pilot" / "train.log").read_text()
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "plain", "--warmup-batches", "2")) == 0
    assert "--warmup-batches" not in capsys.readouterr().out  # 2 of 6 batches: nothing to say


def test_the_warmup_note_starts_at_half_the_run():
    config = TrainConfig(exp_name="x", epochs=1, warmup_batches=200)
    assert config.warmup_note(400) is not None and config.warmup_note(401) is None
    assert TrainConfig(exp_name="x", epochs=6, warmup_batches=200).warmup_note(430) is None  # fast, full
    assert TrainConfig(exp_name="x", epochs=1).warmup_note(1) is None  # no warm-up at all


def test_a_run_started_with_the_preset_flag_resumes(tmp_path, mnist_dir, capsys):
    # Old commands and checkpoints say --preset fast (their saved flags hold "preset": "fast").
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "old", "--preset", "fast", "--epochs", "1")) == 0
    argv = ["--exp-dir", str(tmp_path), "--exp-name", "old", "--resume", "--epochs", "2", "--config", "fast"]
    code, err = run_script_main(train.main, argv, capsys)
    assert code == 0, err
    checkpoint = load_checkpoint(tmp_path / "old" / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["preset"] == "fast"
    assert checkpoint["config"]["hidden_size"] == 8 and checkpoint["model_config"]["context_rows"] == 3


def test_a_recipe_named_another_way_on_resume_is_the_same_recipe(tmp_path, mnist_dir, capsys):
    # The shipped COMMANDs name configs/fast.toml; a run started with --config fast resumes with it.
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "named", "--config", "fast", "--epochs", "1")) == 0
    recipe = str(REPO / "configs" / "fast.toml")
    argv = ["--exp-dir", str(tmp_path), "--exp-name", "named", "--resume", "--epochs", "2"]
    argv += ["--config", recipe]
    code, err = run_script_main(train.main, argv, capsys)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "named" / "checkpoint.ckpt")["epoch"] == 2
    argv[-1] = "smnist"  # another recipe is still a clash
    code, err = run_script_main(train.main, argv, capsys)
    assert code != 0 and "--preset smnist (the experiment has fast)" in err, err


def test_hidden_is_declared_once_on_model_config(monkeypatch):
    # The parser reads --hidden's default and help from ModelConfig's field: change the field, and
    # the flag follows (no second copy of either anywhere).
    hidden = next(f for f in dataclasses.fields(ModelConfig) if f.name == "hidden_size")
    assert train.build_parser().parse_args(["--exp-name", "x"]).hidden_size == ModelConfig().hidden_size
    monkeypatch.setattr(hidden, "default", 77)
    parser = train.build_parser()
    assert parser.parse_args(["--exp-name", "x"]).hidden_size == 77
    action = next(a for a in parser._actions if "--hidden" in a.option_strings)
    assert action.option_strings == ["--hidden", "--hidden-size"]
    assert action.help == hidden.metadata["option"]["help"]


@pytest.mark.parametrize("script", [train, evaluate], ids=["train", "evaluate"])
def test_every_flag_of_a_script_is_a_declared_option(script):
    options = train_options() if script is train else eval_options()
    declared = {flag for o in options for flag in o.flags}
    flags = {s for a in script.build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == declared


def test_refusals_follow_the_declared_conditions():
    @dataclass
    class Toy:
        on: bool = option(False, "--on", help="switch", group="g")
        level: int = option(1, "--level", kind=positive_int, help="n", group="g", only=when("on"))
        kind: str = option("a", "--kind", choices=("a", "b"), help="k", group="g")
        depth: int = option(1, "--depth", kind=positive_int, help="n", group="g", only=when("kind", "b"))

    options = options_of(Toy)
    flags = {"on": False, "level": 2, "kind": "a", "depth": 3}
    assert refusals(options, flags, {"level", "depth"}) == [
        "without --on, --level would be ignored",
        "--kind a would ignore --depth (b only)",
    ]
    assert refusals(options, {**flags, "on": True, "kind": "b"}, {"level", "depth"}) == []
    assert refusals(options, flags, set()) == []  # only what was given is refused
    parser = argparse.ArgumentParser()
    add_options(parser, options, {"g": "toy"})
    assert vars(parser.parse_args(["--on", "--level", "4"])) == {
        "on": True,
        "level": 4,
        "kind": "a",
        "depth": 1,
    }


# Issue 23, finding 9: a condition may test a fact no option holds (what the run reads); before the
# fact is known (evaluate.py before the checkpoint is read) the condition waits.
def test_a_condition_on_a_fact_waits_until_the_fact_is_known():
    reads = when("reads", "pixels", says="{flags} change{s} pixels only: drop {them}")

    @dataclass
    class Toy:
        level: int = option(1, "--level", kind=positive_int, help="n", group="g", only=reads)
        depth: int = option(1, "--depth", kind=positive_int, help="n", group="g", only=reads)

    options, flags = options_of(Toy), {"level": 2, "depth": 3}
    assert refusals(options, flags, {"level", "depth"}) == []  # not known yet
    assert refusals(options, {**flags, "reads": "pixels"}, {"level", "depth"}) == []
    grey = {**flags, "reads": "grey"}
    assert refusals(options, grey, {"level"}) == ["--level changes pixels only: drop it"]
    assert refusals(options, grey, {"level", "depth"}) == [
        "--level and --depth change pixels only: drop them"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--task", "classify", "--binarized-input", "--binarize", "static"],
        ["--task", "classify", "--binarized-input", "--threshold", "0.5"],
        ["--task", "classify", "--data-seed", "3", "--val-size", "100"],  # the validation split: used
        ["--binarize", "static", "--data-seed", "2"],
        ["--threshold", "0.5"],
    ],
    ids=" ".join,
)
def test_data_flags_that_shape_what_is_read_are_accepted(argv):
    parse(argv)


def test_task_and_resume_rules_are_read_off_the_options():
    assert tasks.CLASSIFY_ONLY == {"readout": "last", "permute": False, "binarized_input": False}
    assert set(tasks.NEXT_PIXEL_ONLY) == {"context", "position", "head_hidden", "condition", "loss",
                                          "scheduled_sampling"}  # fmt: skip
    assert {"epochs", "lr", "device", "data_dir", "tensorboard"} == resume.RESUMABLE_CHANGES
    assert {"exp_dir", "exp_name"} == resume.LOCATION_FLAGS and {
        "resume",
        "overwrite",
    } == resume.RUN_MODE_FLAGS


@pytest.mark.parametrize(
    "folder", sorted((REPO / "pretrained").glob("*/COMMAND")), ids=lambda p: p.parent.name
)
def test_a_shipped_command_gives_the_flags_its_model_was_trained_with(folder):
    argv = shlex.split(folder.read_text())
    assert argv[:2] == ["python", "train.py"]
    flags, _ = parse_train_flags(train.build_parser(), argv[2:])
    assert flags["preset"] is None or (REPO / flags["preset"]).is_file()  # a recipe, named as a file
    checkpoint = torch.load(folder.parent / "checkpoint.ckpt", weights_only=True)
    saved = checkpoint["config"]
    # How it was started and where it was written, not what it is.
    for key in set(saved) - {"preset", "resume", "overwrite", "exp_dir"}:
        assert flags[key] == saved[key], key
    # The command it was trained with, as recorded, still parses to the same flags.
    recorded, _ = parse_train_flags(train.build_parser(), shlex.split(checkpoint["shipped"]["command"])[2:])
    assert {**recorded, "preset": None} == {**flags, "preset": None}


def test_the_fast_preset_sets_its_recipe_and_typed_flags_override_it(tmp_path, mnist_dir):
    args = tiny_train_args(tmp_path, mnist_dir, "preset", "--preset", "fast", "--epochs", "1")
    assert train.main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "preset" / "checkpoint.ckpt")
    config, model = checkpoint["config"], checkpoint["model_config"]
    recipe = read_recipe("fast", train_options())
    assert recipe["lr"] == 8e-3 and recipe["epochs"] == 6
    for flag, value in recipe.items():
        if flag != "epochs":
            assert config[flag] == value, flag
    assert config["epochs"] == 1 and len(checkpoint["history"]) == 1  # typed: overrides the recipe's 6
    assert model["context"] and (model["context_rows"], model["context_width"]) == (3, 7)


@pytest.mark.parametrize("config", [training.TrainConfig, ModelConfig, DataConfig])
def test_flag_defaults_match_the_config_defaults(config):
    # train.py's flags and the config dataclasses each state a default; they must agree, or a run
    # from the shell and one from Python would train different things.
    flags = vars(train.build_parser().parse_args(["--exp-name", "x"]))
    for field in dataclasses.fields(config):
        if field.name in flags and field.default is not dataclasses.MISSING:
            assert flags[field.name] == field.default, field.name
