"""All chat rendering: every use of a tokenizer's chat template, and the rule of when a prompt goes through it.

A prompt is plain text or a list of chat messages ({"role", "content"}; a string counts as one user message).
Messages always go through the template when the tokenizer has one; plain text does too unless the caller asks
`template=False` (a run trained with --no-chat-template: text verbatim, e.g. continuing a document). Training turns
a text prompt into the conversation it stands for (`as_conversation`: an hh-rlhf transcript into its turns, other
text into one user turn), so an instruct model is trained the way `generate` and `chat` use it. Training
(data/tokenize), sampling (generate) and judges (judges/) all render here, so one prompt reads the same to each.
"""
from __future__ import annotations

import re
from typing import Union

Prompt = Union[str, list]  # a string, or [{"role": ..., "content": ...}, ...]


HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def transcript_turns(text: str) -> list[dict] | None:
    """An hh-rlhf prompt (`\n\nHuman: …\n\nAssistant:`, ending with the open assistant turn) → its turns, with
    consecutive turns of one speaker joined; None for any other text.

    transcript_turns("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:")
        → [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
           {"role": "user", "content": "Bye"}]
    """
    parts = HH_TURN.split(text)  # ['', 'Human', ' Hi', 'Assistant', ' Hello!', ..., 'Assistant', '']
    if len(parts) < 5 or parts[0].strip() or parts[1] != "Human" or parts[-2] != "Assistant" or parts[-1].strip():
        return None
    turns: list[dict] = []
    for speaker, content in zip(parts[1:-2:2], parts[2:-2:2]):
        role, content = HH_ROLES[speaker], content.strip()
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    return turns


def as_transcript(messages: list[dict]) -> str:
    """Messages as an hh-rlhf transcript ending with the open assistant turn (transcript_turns' inverse): how a run
    trained with --no-chat-template on hh-rlhf saw conversations. A system message leads as plain text."""
    speakers = {"user": "Human", "assistant": "Assistant"}
    lead = "".join(m["content"] for m in messages if m["role"] == "system")
    turns = "".join(f"\n\n{speakers[m['role']]}: {m['content']}" for m in messages if m["role"] in speakers)
    return lead + turns + "\n\nAssistant:"


def as_conversation(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages: messages as they are, an hh-rlhf transcript as its turns, other text one user turn."""
    if not isinstance(prompt, str):
        return [dict(m) for m in prompt]
    return transcript_turns(prompt) or [{"role": "user", "content": prompt}]


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def templated(tokenizer, prompt: Prompt, template: bool = True) -> bool:
    """Whether `prompt` goes through the chat template: messages always (when there is one), text unless
    `template` is False (plain-text prompts as dpokit trains on plain-text pairs)."""
    return has_template(tokenizer) and (template or not isinstance(prompt, str))


def as_chat(tokenizer, prompt, chat: bool):
    """The messages a prompt is trained as, or None when it stays plain text (no template, or chat=False)."""
    if not isinstance(prompt, str):
        return prompt
    return as_conversation(prompt) if chat and has_template(tokenizer) else None


def render_chat(tokenizer, prompt: Prompt, answer: str | None = None) -> str:
    """The chat template's text of `prompt` followed by the generation prompt or, given `answer`, by that assistant
    turn (without a generation prompt: the text an answer's loss or reward is taken on). A text prompt is the
    conversation it stands for (as_conversation)."""
    messages = as_conversation(prompt)
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
