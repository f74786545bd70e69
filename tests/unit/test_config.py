import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from dpokit.config import DPOConfig, add_arguments, build_config, config_from_args, read_yaml
from dpokit.errors import UserError

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "dpokit" / "assets"


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, DPOConfig)
    return config_from_args(DPOConfig, parser.parse_args(argv))


def test_flags_override_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("beta: 0.3\nlearning-rate: 2.0e-6\nmax_steps: 7\n")
    c = parse(["--config", str(cfg), "--beta", "0.5"])
    assert (c.beta, c.learning_rate, c.max_steps) == (0.5, 2e-6, 7)


@pytest.mark.parametrize("values, key", [
    ({"betta": 0.1}, "betta"),
    ({"beta": "high"}, "beta"),
    ({"loss": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
    ({"batch_size": 6, "grad_accum": 4}, "batch_size"),
    ({"max_length": 128, "max_prompt_length": 128}, "max_prompt_length"),
    ({"resume": True, "overwrite": True}, "resume"),
    ({"loss": "nope"}, "loss"),
    ({"eval_data": "x.jsonl", "eval_fraction": 0.2}, "eval_fraction"),
])
def test_impossible_settings_name_the_key(values, key):
    with pytest.raises(UserError, match=key):
        build_config(DPOConfig, values)


def test_every_shipped_yaml_loads():
    files = sorted(SHIPPED.glob("*.yaml"))
    assert files
    for f in files:
        assert isinstance(build_config(DPOConfig, read_yaml(str(f)), str(f)), DPOConfig)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DPOConfig().beta = 0.2


def subparsers(parser=None, prefix=""):
    """Every command's parser by its name, nested ones too ("label init")."""
    from dpokit.cli import build_parser

    parser = parser or build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, sub in action.choices.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            found.update(subparsers(sub, f"{prefix}{name} "))
        else:
            found[prefix + name] = sub
    return found


def test_help_says_each_default_once():
    for name, sub in subparsers().items():
        for action in sub._actions:
            assert (action.help or "").count("(default") <= 1, (name, action.option_strings, action.help)


def test_every_output_is_spelled_output_and_the_old_out_still_works():
    from dpokit.cli import build_parser

    parser = build_parser()
    for argv in (["export", "run", "--merge", "--output", "d"], ["generate", "--model", "m", "--prompts", "p",
                                                                 "--output", "d"], ["eval", "--model", "m", "--output", "d"],
                 ["score", "--model", "m", "--output", "d"], ["export", "run", "--out", "d"]):
        assert parser.parse_args(argv).output == "d", argv
    for name, sub in subparsers().items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert "--out" not in flags or "--output" in flags, name


# Every command reads a YAML --config through its own dataclass, flags win over the file, unknown keys are refused.
YAML_PER_COMMAND = {
    "dpo": {"beta": 0.3, "loss": ["sigmoid", "sft"], "loss_weights": "1,0.5", "output": "runs/x"},
    "sft": {"packing": True, "max_length": 128, "output": "runs/s"},
    "coh": {"positive": "Good:", "negative": "Bad:", "output": "runs/c"},
    "reward": {"learning_rate": 2e-5, "lora_r": 8, "pairs": "all-pairs", "output": "runs/r"},
    "validate": {"path": "pairs.jsonl", "max_length": 128, "no_tokens": True, "pairs": "all-pairs"},
    "report": {"run": "runs/x"},
    "generate": {"model": "m", "prompts": "p.txt", "output": "o.jsonl", "temperature": 0.0, "best_of": 2},
    "eval": {"model": "runs/x", "split": "heldout", "beta": 0.2, "columns": {"prompt": "q", "chosen": "a",
                                                                             "rejected": "b"}},
    "score": {"model": "m", "prompt": "hi", "candidates": "c.txt", "output": "s.jsonl", "max_length": 128},
    "chat": {"model": "m", "system": "be brief", "seed": 3},
    "export": {"source": "runs/x", "output": "out", "merge": True},
    "plan": {"model": "m", "gpus": 4, "gpu_mem_gb": 24, "lora": True, "zero": "3"},
    "iterate": {"model": "m", "prompts": "p.txt", "judge": "py:j.py:f", "rounds": 2, "pairing": "random-pair"},
    "pipeline": {"model": "m", "output": "runs/p", "sft": {"learning_rate": 1e-5}, "dpo": {"beta": 0.2}},  # a recipe
    "label init": {"project": "p", "responses": "r.jsonl", "overlap": 3, "ranking": True},
    "label add-user": {"project": "p", "name": "ana", "admin": True},
    "label serve": {"project": "p", "port": 9000},
    "label export": {"project": "p", "output": "o.jsonl", "policy": "unanimous"},
}
FLAG_OVER_YAML = {  # command: (flags, key, value the flags give)
    "dpo": (["--beta", "0.5"], "beta", 0.5), "sft": (["--max-length", "256"], "max_length", 256),
    "coh": (["--positive", "Fine:"], "positive", "Fine:"), "validate": (["--max-length", "64"], "max_length", 64),
    "reward": (["--eval-fraction", "0.2"], "eval_fraction", 0.2),
    "report": (["runs/y"], "run", "runs/y"), "generate": (["--temperature", "0.5"], "temperature", 0.5),
    "eval": (["--split", "train"], "split", "train"), "score": (["--out", "t.jsonl"], "output", "t.jsonl"),
    "chat": (["--seed", "4"], "seed", 4), "export": (["--output", "elsewhere"], "output", "elsewhere"),
    "plan": (["--gpu-mem", "40"], "gpu_mem_gb", 40.0), "iterate": (["--min-gap", "0.5"], "min_gap", 0.5),
    "pipeline": (["--output", "runs/q"], "output", "runs/q"),
    "label init": (["--overlap", "2"], "overlap", 2), "label add-user": (["--password-file", "f"], "password_file", "f"),
    "label serve": (["--host", "0.0.0.0"], "host", "0.0.0.0"),
    "label export": (["--min-annotators", "2"], "min_annotators", 2)}


def test_every_command_has_a_yaml_test():
    assert set(YAML_PER_COMMAND) == set(subparsers())


@pytest.mark.parametrize("command", sorted(YAML_PER_COMMAND))
def test_every_command_reads_yaml_and_flags_win(command, tmp_path):
    from dpokit.cli import build_parser

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(YAML_PER_COMMAND[command], sort_keys=False))
    args = build_parser().parse_args([*command.split(), "--config", str(path)])
    config = config_from_args(args.config_class, args)
    for key, value in YAML_PER_COMMAND[command].items():
        got = getattr(config, key)
        if key == "columns":
            assert got == "prompt=q,chosen=a,rejected=b"
        elif isinstance(value, list):
            assert got == ",".join(value)
        else:
            assert got == value, key
    flags, key, value = FLAG_OVER_YAML[command]
    args = build_parser().parse_args([*command.split(), "--config", str(path), *flags])
    overridden = config_from_args(args.config_class, args)
    assert getattr(overridden, key) == value != getattr(config, key)
    assert dataclasses.replace(overridden, **{key: getattr(config, key)}) == config  # nothing else changed


@pytest.mark.parametrize("command", sorted(YAML_PER_COMMAND))
def test_every_command_refuses_an_unknown_key(command, tmp_path, capsys):
    from dpokit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**YAML_PER_COMMAND[command], "nonsense": 1}))
    assert main([*command.split(), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: unknown key 'nonsense'" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,named", [(["generate", "--prompts", "p", "--output", "o"], "--model"),
                                        (["export", "--output", "o"], "SOURCE"), (["report"], "RUN"),
                                        (["plan"], "--model"), (["iterate", "--prompts", "p"], "--judge")])
def test_a_missing_required_setting_is_one_line(argv, named, capsys):
    from dpokit.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpokit: error: {named} is required") and err.count("\n") == 1


def test_iterate_refuses_the_settings_it_makes_itself(tmp_path, capsys):
    from dpokit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"prompts": "p.txt", "judge": "py:j.py:f", "data": "pairs.jsonl"}))
    assert main(["iterate", "--config", str(path)]) == 2
    assert "data: iterate makes its own pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # not a flag of iterate at all: argparse's usage error
        main(["iterate", "--prompts", "p", "--judge", "j", "--data", "x"])
    assert exited.value.code == 2 and "unrecognized arguments: --data" in capsys.readouterr().err
