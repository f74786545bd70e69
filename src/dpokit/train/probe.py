"""A few held-out prompts answered greedily at each evaluation: preference metrics cannot see a breaking generator
(a run can gain held-out accuracy while its answers turn into "1.1.1.1…"), the answers can.

At step 0 the policy is the reference: its greedy answers and their log-probs are the baseline, kept in
OUTPUT/probe.json (a resumed run reads them back). At every later evaluation the probe measures, on the exact prompt
ids training used:
    drift/kl_per_token   KL(π_ref ‖ π) per token, estimated on the reference's own answers: the mean over them of
                         (log π_ref(y|x) − log π(y|x)) / |y|. Needs no reference model in memory (the baseline
                         log-probs are the reference's), and it grows when the policy stops giving normal answers
                         their probability.
    drift/repetition     the share of repeated 4-grams in the policy's greedy answers (degenerate loops).
    drift/ended          the share of the policy's greedy answers that end (EOS) within the token budget.
The watch (watch.py) turns these into a warning; the answers themselves go to OUTPUT/probe.jsonl, step by step.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..logprobs import response_logps_ids
from ..eval.files import read_jsonl
from ..generate import eos_ids


def repetition(ids: list[int], n: int = 4) -> float:
    """Share of the n-grams of `ids` that already appeared earlier in it: (1, 2, 1, 2, 1, 2) → 2-grams 0.6."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


@torch.no_grad()
def greedy(model, prompt_ids: list[tuple[int, ...]], eos: list[int], pad_id: int, max_new_tokens: int):
    """Greedy answers to token-id prompts (left-padded batch): the ids up to and including the first EOS."""
    width = max(map(len, prompt_ids))
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         temperature=None, top_p=None, top_k=None, eos_token_id=eos, pad_token_id=pad_id)
    model.train(was_training)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        answers.append(row[:cut])
    return answers


class GenerationProbe:
    def __init__(self, prompt_ids: list[tuple[int, ...]], tokenizer, run_dir: Path, max_new_tokens: int = 48):
        self.prompt_ids, self.tokenizer, self.max_new_tokens = prompt_ids, tokenizer, max_new_tokens
        self.baseline_path, self.answers_path = run_dir / "probe.json", run_dir / "probe.jsonl"
        self.eos = None  # the model's stop tokens, known at the first call
        self.baseline = json.loads(self.baseline_path.read_text()) if self.baseline_path.is_file() else None

    def __call__(self, model, step: int) -> dict[str, float]:
        if self.eos is None:
            self.eos = eos_ids(model, self.tokenizer)
            # resumed: answers a killed run wrote at or after this step are replaced by this run's
            kept = [line for line in self.answers() if line["step"] < step]
            self.answers_path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in kept),
                                         encoding="utf-8")
        pad = self.tokenizer.pad_token_id
        answers = greedy(model, self.prompt_ids, self.eos, pad, self.max_new_tokens)
        if self.baseline is None:  # step 0: the policy is the reference
            logps, _ = response_logps_ids(model, [list(p) for p in self.prompt_ids], answers, pad)
            self.baseline = {"answers": answers, "logps": logps.tolist()}
            self.baseline_path.write_text(json.dumps(self.baseline), encoding="utf-8")
        reference_answers = self.baseline["answers"]
        logps, counts = response_logps_ids(model, [list(p) for p in self.prompt_ids], reference_answers, pad)
        per_token = [(r - p) / max(int(n), 1) for r, p, n in zip(self.baseline["logps"], logps.tolist(), counts)]
        texts = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        with open(self.answers_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "answers": texts}, ensure_ascii=False) + "\n")
        return {"drift/kl_per_token": sum(per_token) / len(per_token),
                "drift/repetition": sum(map(repetition, answers)) / len(answers),
                "drift/ended": sum(bool(a) and a[-1] in self.eos for a in answers) / len(answers)}

    def answers(self) -> list[dict]:
        """probe.jsonl's lines: the answers of each evaluation so far."""
        return read_jsonl(self.answers_path) if self.answers_path.is_file() else []

    def side_by_side(self, limit: int = 2) -> list[dict]:
        """The first `limit` probe prompts with their answers at step 0 and at the last evaluation."""
        lines = self.answers()
        if len(lines) < 2 or lines[0]["step"] != 0:
            return []
        prompts = self.tokenizer.batch_decode([list(p) for p in self.prompt_ids[:limit]], skip_special_tokens=True)
        return [{"prompt": prompt, "before": before, "after": after, "step": lines[-1]["step"]}
                for prompt, before, after in zip(prompts, lines[0]["answers"], lines[-1]["answers"])]
