"""Turn one raw row, whatever its shape, into the one canonical ``PreferencePair``.

Shapes (the names appear in errors and reports):
  standard        {"prompt": str, "chosen": str, "rejected": str}
  conversational  {"prompt" | "messages": [msg, ...], "chosen": [assistant msg], "rejected": [assistant msg]}
                  or TRL's implicit prompt: {"chosen": [msg, ...], "rejected": [msg, ...]} (full conversations)
  hh_rlhf         {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}  (Anthropic HH)
  sharegpt        {"conversations": [{"from", "value"}, ...], "chosen": {"from": "gpt", "value"}, "rejected": ...}
  openai          {"input": {"messages": [...]}, "preferred_output": [msg], "non_preferred_output": [msg]}
  ranked          {"prompt": ..., "responses": [...], "scores" | "ranks": [...]} or UltraFeedback's "completions":
                  N answers in an order of preference, made into pairs by ``lists.list_pairs``
  unpaired        {"prompt": ..., "completion": ..., "label": up/down}: KTO feedback (``feedback.load_feedback``)
Optional system (standard, conversational, openai): a system message put before the prompt; a text prompt
then becomes a conversation [system, user].
Optional margin: "margin", or "score_chosen" - "score_rejected" (top level or inside "metadata").
Unknown extra fields are ignored.
"""
from __future__ import annotations

import json
import math
from typing import Any

from dpokit.errors import DataError
from dpokit.types import PreferencePair

SHAPES = ("standard", "conversational", "hh_rlhf", "sharegpt", "openai", "ranked", "unpaired")
LIST_KEYS = ("responses", "completions")
_NEEDS = {
    "standard": "prompt, chosen, rejected",
    "conversational": "prompt (or messages), chosen, rejected; or chosen, rejected as full conversations",
    "hh_rlhf": "chosen, rejected",
    "sharegpt": "conversations, chosen, rejected",
    "openai": "input, preferred_output, non_preferred_output",
    "ranked": "prompt (or messages, instruction), and responses (with scores or ranks) or completions",
    "unpaired": "prompt, completion, label (thumbs-up/down, for --loss kto)",
}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
HH_MARKER = "\n\nAssistant:"


class RowError(DataError):
    """A problem in one row; keeps ``origin`` and ``field`` so validation can list it."""

    def __init__(self, origin: str, field: str | None, detail: str):
        super().__init__(f"{origin}: {detail}")
        self.origin, self.field, self.detail = origin, field, detail


def detect_shape(value: dict, origin: str) -> str:
    """The shape name of one row, judged from its keys (and, where keys are ambiguous, value types)."""
    if not isinstance(value, dict):
        raise RowError(origin, None, f"expected an object with named fields, got {_type(value)}")
    if any(key in value for key in LIST_KEYS) and "chosen" not in value and "rejected" not in value:
        return "ranked"
    if "completion" in value and "label" in value:
        return "unpaired"
    if "input" in value and ("preferred_output" in value or "non_preferred_output" in value):
        return "openai"
    if "conversations" in value:
        return "sharegpt"
    if "prompt" in value or "messages" in value:
        return "conversational" if _message_list(value.get(_prompt_key(value))) is not None else "standard"
    if "chosen" in value or "rejected" in value:
        completion = value.get("chosen", value.get("rejected"))
        return "conversational" if _message_list(completion) is not None else "hh_rlhf"
    accepted = "; ".join(f"{shape} ({needs})" for shape, needs in _NEEDS.items())
    raise RowError(origin, None, f"row fits no known shape (its keys: {_key_list(value)}); accepted shapes: {accepted}")


def _key_list(value: dict, most: int = 10) -> str:
    """The row's keys for an error line: plain when printable, else escaped; long lists cut."""
    keys = [k if k.isprintable() and len(k) <= 40 else _clip(repr(k)) for k in sorted(map(str, value))]
    more = f", … ({len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more if keys else "none"


def to_pair(value: dict, shape: str, origin: str) -> PreferencePair:
    """Adapt one row of a known shape; every type problem raises ``RowError`` naming the field."""
    if shape not in _ADAPTERS:
        raise ValueError(f"unknown shape {shape!r} for one pair; expected one of {tuple(_ADAPTERS)} "
                         "(ranked rows make several: lists.list_pairs)")
    prompt, chosen, rejected = _ADAPTERS[shape](value, origin)
    if shape in ("standard", "conversational", "openai"):
        prompt = _with_system(prompt, value, origin)
    return PreferencePair(prompt, chosen, rejected, origin, _strength(value, origin))


def _with_system(prompt, value: dict, origin: str):
    """The prompt with the row's `system` message first; a text prompt becomes [system, user]."""
    system = _optional_string(value, "system", origin)
    if system is None:
        return prompt
    if isinstance(prompt, str):  # every row of a file with a system column is a conversation, even with it empty
        prompt = ({"role": "user", "content": prompt},)
    if not system:
        return prompt
    message = {"role": "system", "content": system}
    if prompt[0]["role"] == "system":
        raise RowError(origin, "system", "field 'system' is given but the prompt already starts with a system "
                                         "message; keep one of them")
    return (message,) + tuple(prompt)


def _standard(value: dict, origin: str) -> tuple:
    _require(value, "standard", origin)
    return tuple(_string(value, key, origin) for key in ("prompt", "chosen", "rejected"))


def _conversational(value: dict, origin: str) -> tuple:
    if "prompt" not in value and "messages" not in value:
        return _implicit_prompt(value, origin)
    _require(value, "conversational", origin, fields=(_prompt_key(value), "chosen", "rejected"))
    key = _prompt_key(value)
    prompt = _messages(value[key], key, origin)
    if not prompt:
        raise RowError(origin, key, f"field '{key}' is an empty message list")
    chosen = _single_assistant(_messages(value["chosen"], "chosen", origin), "chosen", origin)
    rejected = _single_assistant(_messages(value["rejected"], "rejected", origin), "rejected", origin)
    return prompt, chosen, rejected


def _implicit_prompt(value: dict, origin: str) -> tuple:
    # TRL's implicit prompt: the prompt is the longest common prefix of the two conversations.
    _require(value, "conversational", origin, fields=("chosen", "rejected"))
    chosen = _messages(value["chosen"], "chosen", origin)
    rejected = _messages(value["rejected"], "rejected", origin)
    n = 0
    # Stop one short of the shorter list so each side keeps its final answer (identical pairs stay
    # pairs, and validation reports them as identical).
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise RowError(origin, "chosen", "fields 'chosen' and 'rejected' share no prompt messages")
    return (
        chosen[:n],
        _single_assistant(chosen[n:], "chosen", origin, offset=n),
        _single_assistant(rejected[n:], "rejected", origin, offset=n),
    )


def _hh_rlhf(value: dict, origin: str) -> tuple:
    _require(value, "hh_rlhf", origin)
    chosen, rejected = _string(value, "chosen", origin), _string(value, "rejected", origin)
    chosen_cut, rejected_cut = _hh_cut(chosen, "chosen", origin), _hh_cut(rejected, "rejected", origin)
    # Split each transcript at its own last assistant turn, never at the first differing character:
    # answers that start alike keep their common start. If the histories differ (5 rows of
    # harmless-base do), chosen's history is the prompt, as in the DPO reference code.
    return chosen[:chosen_cut], chosen[chosen_cut:], rejected[rejected_cut:]


def _hh_cut(text: str, key: str, origin: str) -> int:
    at = text.rfind(HH_MARKER)
    if at < 0:
        detail = f"field '{key}' has no '\\n\\nAssistant:' turn (shape 'hh_rlhf' needs full transcripts)"
        raise RowError(origin, key, detail)
    return at + len(HH_MARKER)


def _sharegpt(value: dict, origin: str) -> tuple:
    _require(value, "sharegpt", origin)
    turns = value["conversations"]
    if not isinstance(turns, list) or not turns:
        detail = f"field 'conversations' must be a non-empty list of turns, got {_describe(turns)}"
        raise RowError(origin, "conversations", detail)
    prompt = tuple(_sharegpt_turn(turn, f"conversations[{i}]", origin) for i, turn in enumerate(turns))
    system = _optional_string(value, "system", origin)
    if system:  # LLaMA-Factory's optional system column
        prompt = ({"role": "system", "content": system},) + prompt
    return prompt, _sharegpt_answer(value, "chosen", origin), _sharegpt_answer(value, "rejected", origin)


def _sharegpt_turn(turn: Any, field: str, origin: str) -> dict:
    if not isinstance(turn, dict):
        raise RowError(origin, field, f"field '{field}' must be an object with 'from' and 'value', got {_type(turn)}")
    who = turn.get("from")
    if not isinstance(who, str) or who not in SHAREGPT_ROLES:
        allowed = ", ".join(SHAREGPT_ROLES)
        raise RowError(origin, f"{field}.from", f"field '{field}.from' must be one of {allowed}, got {_describe(who)}")
    return {"role": SHAREGPT_ROLES[who], "content": _text(turn.get("value"), f"{field}.value", origin)}


def _sharegpt_answer(value: dict, key: str, origin: str) -> str:
    message = _sharegpt_turn(value[key], key, origin)
    if message["role"] != "assistant":
        detail = f"field '{key}.from' must be 'gpt' or 'assistant', got {value[key]['from']!r}"
        raise RowError(origin, f"{key}.from", detail)
    return message["content"]


def _openai(value: dict, origin: str) -> tuple:
    _require(value, "openai", origin)
    request = value["input"]
    if not isinstance(request, dict) or "messages" not in request:
        raise RowError(origin, "input", f"field 'input' must be an object with 'messages', got {_describe(request)}")
    prompt = _messages(request["messages"], "input.messages", origin)
    if not prompt:
        raise RowError(origin, "input.messages", "field 'input.messages' is an empty message list")
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        answers.append(_single_assistant(_messages(value[key], key, origin), key, origin))
    return prompt, answers[0], answers[1]


_ADAPTERS = {
    "standard": _standard,
    "conversational": _conversational,
    "hh_rlhf": _hh_rlhf,
    "sharegpt": _sharegpt,
    "openai": _openai,
}
_FIELDS = {"standard": ("prompt", "chosen", "rejected"), "hh_rlhf": ("chosen", "rejected"),
           "sharegpt": ("conversations", "chosen", "rejected"),
           "openai": ("input", "preferred_output", "non_preferred_output")}


def _require(value: dict, shape: str, origin: str, fields: tuple[str, ...] | None = None) -> None:
    for key in fields or _FIELDS[shape]:
        if key not in value:
            raise RowError(origin, key, f"missing field '{key}' (shape '{shape}' needs {_NEEDS[shape]})")


def _prompt_key(value: dict) -> str:
    return "prompt" if "prompt" in value else "messages"


def _string(value: dict, key: str, origin: str) -> str:
    return _text(value[key], key, origin)


def _optional_string(value: dict, key: str, origin: str) -> str | None:
    return None if value.get(key) is None else _text(value[key], key, origin)


def _text(raw: Any, field: str, origin: str) -> str:
    """``raw`` if it is a string the tokenizer can take; a lone surrogate ("\\ud800" in JSON) it cannot."""
    if not isinstance(raw, str):
        raise RowError(origin, field, f"field '{field}' must be a string, got {_type(raw)}")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        detail = (f"field '{field}' holds an unpaired surrogate {raw[e.start]!r} at character {e.start}, "
                  "which is not text; fix the \\u escape (an emoji needs both halves of its pair)")
        raise RowError(origin, field, detail) from None
    return raw


def text_or_messages(value: dict, key: str, origin: str):
    """Field ``key`` as a prompt: chat messages when it is a message list (or JSON text of one), else text."""
    if _message_list(value[key]) is None:
        return _text(value[key], key, origin)
    prompt = _messages(value[key], key, origin)
    if not prompt:
        raise RowError(origin, key, f"field '{key}' is an empty message list")
    return prompt


def _message_list(raw: Any) -> list | None:
    """``raw`` as a list if it is one, or is JSON text of a list of objects (a CSV cell); else None."""
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str) and raw.lstrip().startswith("["):
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return None
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
            return parsed
    return None


def _messages(raw: Any, key: str, origin: str) -> tuple[dict, ...]:
    items = _message_list(raw)
    if items is None:
        raise RowError(origin, key, f"field '{key}' must be a list of {{role, content}} messages, got {_describe(raw)}")
    return tuple(_message(m, f"{key}[{i}]", origin) for i, m in enumerate(items))


def _message(raw: Any, field: str, origin: str) -> dict:
    if not isinstance(raw, dict):
        raise RowError(origin, field, f"field '{field}' must be a {{role, content}} object, got {_type(raw)}")
    role, content = raw.get("role"), raw.get("content")
    if role not in ROLES:
        detail = f"field '{field}.role' must be one of {', '.join(ROLES)}, got {_describe(role)}"
        raise RowError(origin, f"{field}.role", detail)
    # Extra keys (name, weight, ...) are dropped.
    return {"role": role, "content": _text(content, f"{field}.content", origin)}


def _single_assistant(messages: tuple[dict, ...], key: str, origin: str, offset: int = 0) -> str:
    if len(messages) != 1:
        where = f" after the {offset} shared prompt messages" if offset else ""
        raise RowError(origin, key, f"field '{key}' must hold exactly one assistant message{where}, got {len(messages)}")
    if messages[0]["role"] != "assistant":
        field = f"{key}[{offset}].role"
        raise RowError(origin, field, f"field '{field}' must be 'assistant', got {messages[0]['role']!r}")
    return messages[0]["content"]


def _strength(value: dict, origin: str) -> float | None:
    """The pair's preference strength: its `margin` field, or score_chosen − score_rejected."""
    if _present(value.get("margin")):
        return _number(value["margin"], "margin", origin)
    metadata = value.get("metadata")
    for where, source in (("", value), ("metadata.", metadata if isinstance(metadata, dict) else {})):
        has_chosen, has_rejected = _present(source.get("score_chosen")), _present(source.get("score_rejected"))
        if has_chosen and has_rejected:
            chosen = _number(source["score_chosen"], f"{where}score_chosen", origin)
            return _difference(chosen, _number(source["score_rejected"], f"{where}score_rejected", origin),
                               where, origin)
        if has_chosen or has_rejected:
            missing = f"{where}score_rejected" if has_chosen else f"{where}score_chosen"
            detail = f"missing field '{missing}' (a margin needs both score_chosen and score_rejected)"
            raise RowError(origin, missing, detail)
    return None


def _difference(chosen: float, rejected: float, where: str, origin: str) -> float:
    margin = chosen - rejected
    if not math.isfinite(margin):  # 1e308 - (-1e308) overflows to inf
        detail = (f"margin '{where}score_chosen' - '{where}score_rejected' = {chosen!r} - {rejected!r} "
                  "is too large for a float; rescale the scores")
        raise RowError(origin, f"{where}score_chosen", detail)
    return margin


def _present(raw: Any) -> bool:
    return raw is not None and raw != ""  # CSV writes a missing value as an empty cell


def _number(raw: Any, field: str, origin: str) -> float:
    number = None
    # True is an int, not a score; every CSV value is a string.
    if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        try:
            number = float(raw)
        except (ValueError, OverflowError):  # OverflowError: an int beyond the float range
            pass
    if number is None or not math.isfinite(number):
        raise RowError(origin, field, f"field '{field}' must be a finite number, got {_describe(raw)}")
    return number


def _type(raw: Any) -> str:
    return "null" if raw is None else type(raw).__name__


def _describe(raw: Any) -> str:
    """The type, plus a short look at the value where that helps (a string or a bool)."""
    if isinstance(raw, (str, bool)):
        return f"{_type(raw)} {_clip(repr(raw))}"
    return _type(raw)


def _clip(text: str, limit: int = 40) -> str:
    return text[:limit] + "…" if len(text) > limit else text
