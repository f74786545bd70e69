"""What every judge shares: the sample it scores, the interface, and the checks on what it returns."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ..data.templates import Prompt
from ..errors import UserError


@dataclass
class Sample:
    """One response to one prompt, with the token ids it was sampled (or tokenized) as."""

    prompt: Prompt  # as given: text or [{"role", "content"}, ...]
    response: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    policy_logps: float | None = None  # log π(response | prompt), filled by whoever computes it first
    reference_logps: float | None = None


class Judge(Protocol):
    """Scores responses: one finite number per sample, higher is better. A judge may look at all the samples of a
    prompt together (a pairwise judge compares them); the order of the returned numbers is the samples' order."""

    name: str

    def __call__(self, samples: list[Sample]) -> list[float]: ...


def plain_prompt(prompt: Prompt) -> str:
    """Text for judges that read text: a string as is; messages as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def shown(prompt: Prompt, limit: int = 60) -> str:
    text = plain_prompt(prompt).replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "…")


def checked(values, samples: list[Sample], name: str) -> list[float]:
    """The judge's numbers, or one line naming the judge and the prompt where they went wrong."""
    first = shown(samples[0].prompt) if samples else "(none)"
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"judge {name} must return a list of numbers (prompt {first})") from None
    if len(values) != len(samples):
        raise UserError(f"judge {name} returned {len(values)} scores for {len(samples)} responses (prompt {first})")
    for value, sample in zip(values, samples):
        if not math.isfinite(value):
            raise UserError(f"judge {name} returned {value} for a response to prompt {shown(sample.prompt)}")
    return values
