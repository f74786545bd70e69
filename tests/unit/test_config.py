import argparse
import dataclasses
from pathlib import Path

import pytest

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


def subparsers():
    from dpokit.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


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
        assert parser.parse_args(argv).out == "d", argv
    for name, sub in subparsers().items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert "--out" not in flags or "--output" in flags, name
