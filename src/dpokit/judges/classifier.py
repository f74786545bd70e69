"""`hf:DIR`: a local sequence-classification reward model as a judge, with its own tokenizer and chat template.

The reward is the model's last logit; with exactly 2 labels it is logit[1] − logit[0] (the log-odds of label 1,
"good", over label 0), so a binary classifier and a 1-logit reward model (`dpokit reward`) read the same way.

Its input:
- a model trained by `dpokit reward` (its config.json carries `dpokit_reward_input`): exactly the token ids its
  training built for a pair with this prompt and answer (data/tokenize.py, with the run's chat-template setting,
  truncation policy and lengths; a model from before the setting was recorded trained text prompts verbatim), so the
  same text gets the same number it got in training;
- any other classifier: the conversation rendered by its own chat template when the prompt is a conversation (or
  text) and it has one, else prompt text + response text, tokenized as the tokenizer does.
Rows are right-padded, batched by length (less padding); the model pools each row itself (decoder classifiers: the
rightmost non-pad token).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.templates import render_chat, templated
from ..data.tokenize import tokenize_pair
from ..errors import UserError
from ..types import PreferencePair
from .base import Sample, checked, plain_prompt, shown

REWARD_INPUT = "dpokit_reward_input"  # config.json key of a `dpokit reward` model: how training built its inputs


def pair_ids(tokenizer, prompt, response: str, *, max_length: int, max_prompt_length: int | None,
             chat: bool) -> list[int]:
    """The ids a `dpokit reward` run trains on for (prompt, response): its pair tokenization and truncation policy."""
    pair = PreferencePair(prompt if isinstance(prompt, str) else tuple(prompt), response, response, "judge")
    tokenized = tokenize_pair(tokenizer, pair, max_length=max_length, max_prompt_length=max_prompt_length,
                              counts=Counter(), chat=chat)
    if isinstance(tokenized, str):
        raise UserError(f"prompt {shown(prompt)}: {tokenized.removeprefix('judge: ')}")
    return list(tokenized.prompt_ids + tokenized.chosen_ids)


def right_padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass
class ClassifierJudge:
    model: object
    tokenizer: object
    name: str
    batch_size: int = 8

    def text(self, sample: Sample) -> str:
        if templated(self.tokenizer, sample.prompt):
            return render_chat(self.tokenizer, sample.prompt, sample.response)
        return plain_prompt(sample.prompt) + sample.response

    def ids(self, samples: list[Sample]) -> list[list[int]]:
        trained = getattr(self.model.config, REWARD_INPUT, None)
        if trained:  # a dpokit reward model: the ids its training built
            return [pair_ids(self.tokenizer, s.prompt, s.response, max_length=trained["max_length"],
                             max_prompt_length=trained["max_prompt_length"], chat=trained.get("chat", False))
                    for s in samples]
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        return self.tokenizer([self.text(s) for s in samples], truncation=True, max_length=limit)["input_ids"]

    @torch.no_grad()
    def __call__(self, samples: list[Sample]) -> list[float]:
        device = next(self.model.parameters()).device
        pad_id = self.model.config.pad_token_id
        rows = self.ids(samples)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # like lengths share a batch: little padding
        values = [0.0] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            batch = right_padded([rows[i] for i in chosen], self.tokenizer.pad_token_id if pad_id is None else pad_id)
            logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()  # (B, labels)
            scores = logits[:, 1] - logits[:, 0] if logits.shape[-1] == 2 else logits[:, -1]
            for i, value in zip(chosen, scores.tolist()):
                values[i] = value
        return checked(values, samples, self.name)


def load_classifier(path: str):
    from transformers import AutoModelForSequenceClassification

    from ..models import load_tokenizer

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"judge hf:{path}: not a local Hugging Face model folder (no config.json)")
    tokenizer = load_tokenizer(folder)
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
    if model.config.pad_token_id is None:  # needed to find each row's last token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer
