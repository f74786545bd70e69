"""`hf:DIR`: a local sequence-classification reward model as a judge, with its own tokenizer and chat template.

The reward is the model's last logit; with exactly 2 labels it is logit[1] − logit[0] (the log-odds of label 1,
"good", over label 0), so a binary classifier and a 1-logit reward model (`dpokit reward`) read the same way. Its
input is the conversation rendered by its own chat template when the prompt is a conversation and it has one, else
prompt text + response text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.templates import render_chat, templated
from ..errors import UserError
from .base import Sample, checked, plain_prompt


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
