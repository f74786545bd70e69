"""Judges: what scores sampled responses, behind one interface (base.Judge), for `dpokit iterate`, `dpokit eval
--generate` and best-of-N. Every judge runs on this machine; a spec names it:

    hf:DIR               a local sequence-classification reward model (one trained by `dpokit reward`, or any) with
                         its own tokenizer and chat template. The reward is its last logit; with exactly 2 labels
                         logit[1] − logit[0] (the log-odds of label 1, "good"), so a binary classifier and a 1-logit
                         reward model read the same way. A `dpokit reward` model scores exactly the token ids its
                         training built (classifier.py).
    py:MODULE:FUNCTION   a Python callable f(prompts: list[str], responses: list[str]) -> list[float]; MODULE is an
                         importable module or a path to a .py file. Chat prompts arrive as "role: content" lines.
    implicit             β · (log π(y|x) − log π_ref(y|x)) of a policy and its reference on the exact sampled ids
                         (Rafailov et al. 2023, "secretly a reward model").
    llm:DIR              a local instruct model comparing responses two at a time, in both orders (llm.py).
    llm-rubric:DIR       a local instruct model scoring each response on a 5-point additive rubric (llm.py).
    human:PROJECT        people, in a `dpokit label` project: `dpokit iterate` pushes a round's samples there and
                         trains on the choices once they are judged (human.py; iterate builds it, not load_judge, since
                         it gives pairs, not a score per sample).
"""
from __future__ import annotations

from ..errors import UserError
from .base import Judge, Sample, checked, plain_prompt

__all__ = ["Judge", "Sample", "checked", "plain_prompt", "load_judge", "SPECS"]
SPECS = "hf:DIR, py:MODULE:FUNCTION, implicit, llm:DIR, llm-rubric:DIR"


def load_judge(spec: str, *, policy=None, reference=None, beta: float = 0.1, pad_id: int | None = None,
               batch_size: int = 8) -> Judge:
    """The judge a spec names (see the module docstring); `policy`, `reference`, `beta` and `pad_id` serve
    `implicit`."""
    kind, _, rest = spec.partition(":")
    if spec == "implicit":
        from .implicit import ImplicitJudge

        if policy is None or reference is None:
            raise UserError("judge implicit needs a policy and a reference (--model and --ref / --judge-ref)")
        return ImplicitJudge(policy, reference, beta, pad_id, batch_size)
    if kind == "py" and rest:
        from .function import FunctionJudge, load_function

        return FunctionJudge(load_function(rest), spec)
    if kind == "hf" and rest:
        from .classifier import ClassifierJudge, load_classifier

        model, tokenizer = load_classifier(rest)
        return ClassifierJudge(model, tokenizer, spec, batch_size)
    if kind in ("llm", "llm-rubric") and rest:
        from .llm import LocalJudgeModel, PairwiseJudge, RubricJudge, load_judge_model

        judge = LocalJudgeModel(*load_judge_model(rest), batch_size=batch_size)
        return PairwiseJudge(judge, spec) if kind == "llm" else RubricJudge(judge, spec)
    if kind == "human":
        raise UserError(f"judge {spec!r}: people judge whole rounds in `dpokit label`, so only `dpokit iterate` "
                        "(without --online) takes a human judge; here use hf:, py:, implicit, llm: or llm-rubric:")
    raise UserError(f"judge {spec!r}: expected one of {SPECS}")
