"""Rewards that score sampled responses, named on the command line by `--reward SPEC`:

    hf:PATH               a local Hugging Face sequence-classification model folder. The reward is the logit of
                          the last label; with exactly 2 labels it is logit[1] − logit[0] (the log-odds of label 1,
                          "good", over label 0), so a binary classifier and a 1-logit reward model read the same way.
                          Its input is the conversation rendered by its own chat template when it has one, else
                          prompt text + response text.
    py:MODULE:FUNCTION    a Python callable f(prompts: list[str], responses: list[str]) -> list[float]; MODULE is an
                          importable module name or a path to a .py file. Chat prompts arrive as "role: content" lines.
    implicit              β · (log π(y|x) − log π_ref(y|x)) of the (--model, --ref) pair on the exact sampled ids:
                          the policy read as a reward model (Rafailov et al. 2023, "secretly a reward model").
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.templates import Prompt, render_chat, templated
from ..errors import UserError
from .samples import response_logps_ids


@dataclass
class Sample:
    """One response to one prompt, with the token ids it was sampled (or tokenized) as."""

    prompt: Prompt  # as given: text or [{"role", "content"}, ...]
    response: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    policy_logps: float | None = None  # log π(response | prompt), filled by whoever computes it first
    reference_logps: float | None = None


def plain_prompt(prompt: Prompt) -> str:
    """Text for reward functions: a string as is; messages as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def checked(values, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"reward {what} must return a list of numbers") from None
    if len(values) != n:
        raise UserError(f"reward {what} returned {len(values)} values for {n} responses")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"reward {what} returned a NaN or infinite value")
    return values


@dataclass
class PythonReward:
    fn: Callable
    name: str

    def __call__(self, samples: list[Sample]) -> list[float]:
        values = self.fn([plain_prompt(s.prompt) for s in samples], [s.response for s in samples])
        return checked(values, len(samples), self.name)


@dataclass
class ClassifierReward:
    model: object
    tokenizer: object
    name: str
    batch_size: int = 8

    def text(self, sample: Sample) -> str:
        if templated(self.tokenizer, sample.prompt):
            return render_chat(self.tokenizer, sample.prompt, sample.response)
        return plain_prompt(sample.prompt) + sample.response

    @torch.no_grad()
    def __call__(self, samples: list[Sample]) -> list[float]:
        device = next(self.model.parameters()).device
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        values = []
        for start in range(0, len(samples), self.batch_size):
            texts = [self.text(s) for s in samples[start:start + self.batch_size]]
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            logits = self.model(**batch.to(device)).logits.float()  # (B, labels)
            values += (logits[:, 1] - logits[:, 0] if logits.shape[-1] == 2 else logits[:, -1]).tolist()
        return checked(values, len(samples), self.name)


@dataclass
class ImplicitReward:
    """β · (log π − log π_ref) on each sample's own ids; log-probs already on a sample are reused."""

    policy: object
    reference: object
    beta: float
    pad_id: int
    batch_size: int = 8
    name: str = "implicit"

    def __call__(self, samples: list[Sample]) -> list[float]:
        add_logps(samples, self.policy, self.reference, self.pad_id, batch_size=self.batch_size)
        return [self.beta * (s.policy_logps - s.reference_logps) for s in samples]


def add_logps(samples: list[Sample], policy, reference, pad_id: int, *, batch_size: int = 8) -> None:
    """Fill `policy_logps` / `reference_logps` where missing (the reference IS the policy when they are one object)."""
    for attr, model in (("policy_logps", policy), ("reference_logps", reference)):
        todo = [s for s in samples if getattr(s, attr) is None]
        if not todo:
            continue
        if attr == "reference_logps" and reference is policy:
            for s in todo:
                s.reference_logps = s.policy_logps
            continue
        logps, _ = response_logps_ids(model, [list(s.prompt_ids) for s in todo], [list(s.response_ids) for s in todo],
                                      pad_id, batch_size=batch_size)
        for s, value in zip(todo, logps.tolist()):
            setattr(s, attr, value)


def load_python(spec: str) -> Callable:
    """`MODULE:FUNCTION` (MODULE importable, or a path to a .py file) → the function."""
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise UserError(f"--reward py:{spec}: expected py:MODULE:FUNCTION (e.g. py:my_rewards:length_penalty)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise UserError(f"--reward py:{spec}: file {module_name!r} not found")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"--reward py:{spec}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"--reward py:{spec}: {module_name!r} has no function {fn_name!r}")
    return fn


def load_classifier(path: str):
    from transformers import AutoModelForSequenceClassification

    from ..models import load_tokenizer

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"--reward hf:{path}: not a local Hugging Face model folder (no config.json)")
    tokenizer = load_tokenizer(folder)
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
    if model.config.pad_token_id is None:  # needed to find each row's last token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def load_reward(spec: str, *, policy=None, reference=None, beta: float = 0.1, pad_id: int | None = None,
                batch_size: int = 8):
    """A callable list[Sample] → list[float] for `--reward SPEC` (hf:PATH, py:MODULE:FUNCTION or implicit)."""
    kind, _, rest = spec.partition(":")
    if spec == "implicit":
        if policy is None or reference is None:
            raise UserError("--reward implicit needs a policy and a reference (--model and --ref / --judge-ref)")
        return ImplicitReward(policy, reference, beta, pad_id, batch_size)
    if kind == "py" and rest:
        return PythonReward(load_python(rest), spec)
    if kind == "hf" and rest:
        model, tokenizer = load_classifier(rest)
        return ClassifierReward(model, tokenizer, spec, batch_size)
    raise UserError(f"--reward {spec!r}: expected hf:PATH (a sequence-classification model folder), "
                    "py:MODULE:FUNCTION, or implicit")
