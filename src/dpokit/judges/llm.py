"""A local instruct model as a judge: `llm:DIR` compares two responses, `llm-rubric:DIR` scores one.

Both read the judge's next-token probabilities instead of sampling its answer, so a verdict is deterministic and never
fails to parse (a 135M judge rarely writes "Score: 4" on cue; its probabilities are still informative).

    llm:DIR          pairwise (Zheng et al. 2023, "Judging LLM-as-a-judge", MT-Bench's pairwise prompt): for every two
                     responses to a prompt the judge is asked "A or B?" in both orders; a response wins a comparison
                     only when it is preferred in both (a verdict that flips with the order is a tie, the known
                     position bias). A response's reward is its share of the comparisons it won (ties count half),
                     in [0, 1].
    llm-rubric:DIR   the additive 5-point rubric of Self-Rewarding Language Models (Yuan et al. 2024); the reward
                     is the expected score Σ k · p(k) over the tokens "0".."5" after "Score: ", the limit of
                     averaging the scores of many sampled verdicts.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..data.prepare import prompt_key
from .base import Sample, checked, plain_prompt

PAIRWISE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. Choose the assistant that follows the user's instructions and answers the user's "
    "question better: consider helpfulness, relevance, accuracy, depth and harmlessness. Do not let the order or the "
    "length of the responses influence you.\n\n[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n"
    "{a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{b}\n"
    "[The End of Assistant B's Answer]\n\nAnswer with a single letter, A or B.")
RUBRIC = (
    "Review the user's question and the corresponding response using the additive 5-point scoring system described "
    "below. Points are accumulated based on the satisfaction of each criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if "
    "it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user's question, but does not "
    "completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user's question in a useful way, "
    "regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in "
    "blogs or search results.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the "
    "user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room "
    "for improvement in clarity, conciseness or focus.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, "
    "without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and "
    "insightful answer.\n\nUser: {question}\n\n<response>{response}</response>\n\n"
    "After examining the user's instruction and the response, conclude with the total score, a single number from "
    "0 to 5.")


def answer_ids(tokenizer, words: list[str]) -> list[list[int]]:
    """For each word, the single-token spellings a model may answer with ("A", " A"); tokenizers differ."""
    out = []
    for word in words:
        ids = {tuple(tokenizer.encode(spelling, add_special_tokens=False)) for spelling in (word, " " + word)}
        out.append(sorted(i[0] for i in ids if len(i) == 1))
        if not out[-1]:
            raise ValueError(f"the judge's tokenizer has no single token for {word!r}")
    return out


@dataclass
class LocalJudgeModel:
    """A causal LM read at the next token after a rendered judging prompt."""

    model: object
    tokenizer: object
    batch_size: int = 8

    def render(self, text: str) -> str:
        from ..data.templates import render_prompt

        return render_prompt(self.tokenizer, text, template=True)

    @torch.no_grad()
    def next_token_logprobs(self, texts: list[str]) -> torch.Tensor:
        """(N, vocab) log-probabilities of the token after each rendered text."""
        from ..data.templates import has_template
        from ..generate import encode

        device = next(self.model.parameters()).device
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = encode(self.tokenizer, [self.render(t) for t in texts[start:start + self.batch_size]],
                           special=not has_template(self.tokenizer)).to(device)
            logits = self.model(**batch).logits[:, -1].float()  # left-padded: the last position is each row's next
            rows.append(torch.log_softmax(logits, dim=-1).cpu())
        return torch.cat(rows)

    def choice_logprobs(self, texts: list[str], words: list[str]) -> torch.Tensor:
        """(N, len(words)): log p of each word as the next token (its spellings summed)."""
        logprobs = self.next_token_logprobs(texts)
        return torch.stack([torch.logsumexp(logprobs[:, ids], dim=-1) for ids in answer_ids(self.tokenizer, words)],
                           dim=-1)


def by_prompt(samples: list[Sample]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(prompt_key(s), []).append(i)
    return groups


@dataclass
class PairwiseJudge:
    judge: LocalJudgeModel
    name: str

    def __call__(self, samples: list[Sample]) -> list[float]:
        comparisons = [(i, j) for group in by_prompt(samples).values() for i, j in itertools.combinations(group, 2)]
        texts = []
        for i, j in comparisons:  # both orders, so that a verdict bound to a position cancels out
            question = plain_prompt(samples[i].prompt)
            texts.append(PAIRWISE.format(question=question, a=samples[i].response, b=samples[j].response))
            texts.append(PAIRWISE.format(question=question, a=samples[j].response, b=samples[i].response))
        points = [0.0] * len(samples)
        played = [0] * len(samples)
        if comparisons:
            logprobs = self.judge.choice_logprobs(texts, ["A", "B"])
            first_wins = (logprobs[:, 0] > logprobs[:, 1]).view(-1, 2)  # (comparisons, orders): did "A" win?
            for (i, j), (i_first, j_first) in zip(comparisons, first_wins.tolist()):
                i_wins = i_first and not j_first  # i was A in the first order, B in the second
                j_wins = j_first and not i_first
                points[i] += 1.0 if i_wins else 0.0 if j_wins else 0.5
                points[j] += 1.0 if j_wins else 0.0 if i_wins else 0.5
                played[i] += 1
                played[j] += 1
        values = [p / n if n else 0.5 for p, n in zip(points, played)]
        return checked(values, samples, self.name)


@dataclass
class RubricJudge:
    judge: LocalJudgeModel
    name: str

    def __call__(self, samples: list[Sample]) -> list[float]:
        texts = [RUBRIC.format(question=plain_prompt(s.prompt), response=s.response) for s in samples]
        logprobs = self.judge.choice_logprobs(texts, [str(k) for k in range(6)])  # (N, 6)
        expected = (logprobs.softmax(dim=-1) * torch.arange(6.0)).sum(dim=-1)  # renormalised over the six digits
        return checked(expected.tolist(), samples, self.name)


def load_judge_model(spec: str):
    """(model, tokenizer) of a local instruct model: a folder, a .gguf file or the embedded name, in eval mode."""
    from ..models import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(spec)
    tokenizer = load_tokenizer(path)
    model = load_model(path, train=False)
    model.eval().requires_grad_(False)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer
