"""`dpokit chat`: a terminal conversation with a local model; replies stream as they are generated.

The history is a list of chat-template messages. `/reset` clears it (the system message stays), `/exit` or
end of input (Ctrl-D) quits with exit code 0. When the history outgrows the model's context, the oldest turns
are dropped.
"""
from __future__ import annotations

import sys

from .data.templates import as_transcript
from .generate import load_for_generation, render_prompt, stream_reply
from .models import trained_verbatim

PROMPT = "you> "
HELP = "dpokit chat: type a message; /reset clears the conversation, /exit (or Ctrl-D) quits"


def context_limit(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def fit_history(tokenizer, messages: list[dict], budget: int | None) -> list[dict]:
    """Drop the oldest user/assistant turns (never the system message, never the newest message) until the
    rendered conversation fits in `budget` tokens."""
    if budget is None:
        return messages
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    def size(conversation: list[dict]) -> int:
        return len(tokenizer(render_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"])

    while len(turns) > 1 and size(system + turns) > budget:
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return system + turns


def chat_loop(model_spec: str, *, system: str | None = None, temperature: float = 0.7, top_p: float = 1.0,
              max_new_tokens: int = 256, seed: int = 0, stdout=None) -> int:
    import torch

    stdout = stdout or sys.stdout
    model, tokenizer = load_for_generation(model_spec)
    verbatim = trained_verbatim(model_spec)
    if verbatim:
        print("(this run trained text prompts without the chat template, so the conversation is sent as an "
              "hh-rlhf transcript: \\n\\nHuman: … \\n\\nAssistant:)", file=stdout, flush=True)
    torch.manual_seed(seed)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    limit = context_limit(model)
    budget = None if limit is None else max(1, limit - max_new_tokens)
    print(HELP, file=stdout, flush=True)
    while True:
        try:
            text = input(PROMPT).strip()  # input(): line editing in a terminal
        except EOFError:  # Ctrl-D
            stdout.write("\n")
            return 0
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            messages = list(start)
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        messages = fit_history(tokenizer, messages + [{"role": "user", "content": text}], budget)
        stdout.write("assistant> ")
        stdout.flush()
        prompt = as_transcript(messages) if verbatim else messages
        reply = stream_reply(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, out=stdout, template=not verbatim)
        reply = reply.split("\n\nHuman:")[0] if verbatim else reply  # the transcript's next turn is not the reply
        stdout.write("\n")
        stdout.flush()
        messages.append({"role": "assistant", "content": reply})
