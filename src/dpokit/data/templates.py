"""All chat rendering: every use of a tokenizer's chat template, and the rule of when a prompt goes through it.

A prompt is plain text or a list of chat messages ({"role", "content"}; a string counts as one user message).
Messages always go through the template when the tokenizer has one; plain text does too unless the caller asks
`template=False`, the way dpokit trains plain-text pairs (verbatim). Training (data/tokenize), sampling (generate)
and judges (judges/) all render here, so one prompt reads the same to each of them.
"""
from __future__ import annotations

from typing import Union

Prompt = Union[str, list]  # a string, or [{"role": ..., "content": ...}, ...]


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def templated(tokenizer, prompt: Prompt, template: bool = True) -> bool:
    """Whether `prompt` goes through the chat template: messages always (when there is one), text unless
    `template` is False (plain-text prompts as dpokit trains on plain-text pairs)."""
    return has_template(tokenizer) and (template or not isinstance(prompt, str))


def render_chat(tokenizer, prompt: Prompt, answer: str | None = None) -> str:
    """The chat template's text of `prompt` followed by the generation prompt or, given `answer`, by that assistant
    turn (without a generation prompt: the text an answer's loss or reward is taken on)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if answer is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)


def render_prompt(tokenizer, prompt: Prompt, *, template: bool = True) -> str:
    """The text the model continues: chat template + generation prompt when the tokenizer has a template.

    render_prompt(chatml_tokenizer, "Hi")                 → '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    render_prompt(chatml_tokenizer, "Hi", template=False) → 'Hi'
    render_prompt(plain_tokenizer, "Hi")                  → 'Hi'
    """
    if templated(tokenizer, prompt, template):
        return render_chat(tokenizer, prompt)
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"
