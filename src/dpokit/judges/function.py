"""`py:MODULE:FUNCTION`: a Python callable as a judge, f(prompts: list[str], responses: list[str]) -> list[float].

MODULE is an importable module name or a path to a .py file; chat prompts arrive as "role: content" lines. The call
is yours: an exception in it stops the round with one line naming the judge and the prompt.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .base import Sample, checked, plain_prompt, shown


@dataclass
class FunctionJudge:
    fn: Callable
    name: str

    def __call__(self, samples: list[Sample]) -> list[float]:
        try:
            values = self.fn([plain_prompt(s.prompt) for s in samples], [s.response for s in samples])
        except Exception as e:  # the user's code: any failure is reported as theirs, in one line
            where = shown(samples[0].prompt) if samples else "(none)"
            raise UserError(f"judge {self.name} failed on prompt {where}: {type(e).__name__}: {e}") from None
        return checked(values, samples, self.name)


def load_function(spec: str) -> Callable:
    """`MODULE:FUNCTION` (MODULE importable, or a path to a .py file) → the function."""
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise UserError(f"judge py:{spec}: expected py:MODULE:FUNCTION (e.g. py:my_rewards:length_penalty)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise UserError(f"judge py:{spec}: file {module_name!r} not found")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"judge py:{spec}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"judge py:{spec}: {module_name!r} has no function {fn_name!r}")
    return fn
