"""Rows → ``SFTExample``s for `dpokit sft`, and preference pairs → Chain-of-Hindsight examples for `dpokit coh`.

SFT shapes (detected per row; the file's shape is its first valid row's):
  prompt_completion  {"prompt": str | [msg, ...], "completion": str | [assistant msg]}
  messages           {"messages": [msg, ..., assistant msg]}   the last assistant message is the answer
  alpaca             {"instruction": str, "input": str (optional), "output": str, "system": str (optional)}
  sharegpt_sft       {"conversations": [{"from", "value"}, ..., gpt turn]}
  preference pairs   any shape `dpokit dpo` accepts: the chosen answer is the target ("Preferred-FT"); a ranked
                     list's best answer
A column mapping (``columns``) is applied to each row first, as for pairs.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..types import PreferencePair, SFTExample
from .adapters import RowError, _messages, _sharegpt_turn, _text, _type, detect_shape, to_pair
from .columns import ColumnMap
from .feedback import is_feedback_label
from .io import read_records
from .lists import best_answer
from .validate import LoadReport, Problem, adapted_rows, load_pairs, stop_on_problems


def answer_only(prompt, answer: str, origin: str) -> SFTExample:
    return SFTExample(prompt, ((answer, True),), origin)


def sft_shape(value, origin: str) -> str:
    if not isinstance(value, dict):
        raise RowError(origin, None, f"expected an object with named fields, got {_type(value)}")
    if "instruction" in value and "output" in value:
        return "alpaca"
    if "completion" in value and "label" in value and is_feedback_label(value["label"]):
        raise RowError(origin, "label", "thumbs-up/down rows (shape 'unpaired') train with `dpokit dpo --loss kto`; "
                                        "SFT on them would also learn the thumbs-down answers (keep the thumbs-up rows)")
    if "completion" in value:
        return "prompt_completion"
    if "chosen" not in value and "rejected" not in value:
        if "messages" in value:
            return "messages"
        if "conversations" in value:
            return "sharegpt_sft"
    return "preference:" + detect_shape(value, origin)


def _conversation_answer(messages: tuple, key: str, origin: str) -> SFTExample:
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise RowError(origin, key, f"field '{key}' must end with an assistant message after at least one other message")
    return answer_only(messages[:-1], messages[-1]["content"], origin)


def to_example(value: dict, shape: str, origin: str) -> SFTExample:
    if shape == "alpaca":
        instruction = _text(value["instruction"], "instruction", origin)
        extra = _text(value.get("input") or "", "input", origin)
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        prompt = ({"role": "user", "content": user},)
        if value.get("system"):
            prompt = ({"role": "system", "content": _text(value["system"], "system", origin)},) + prompt
        return answer_only(prompt, _text(value["output"], "output", origin), origin)
    if shape == "prompt_completion":
        if "prompt" not in value:
            raise RowError(origin, "prompt", "missing field 'prompt' (shape 'prompt_completion' needs prompt, completion)")
        raw_prompt, raw_answer = value["prompt"], value["completion"]
        prompt = raw_prompt if isinstance(raw_prompt, str) else _messages(raw_prompt, "prompt", origin)
        if isinstance(raw_answer, str):
            return answer_only(prompt, raw_answer, origin)
        answer = _messages(raw_answer, "completion", origin)
        if len(answer) != 1 or answer[0]["role"] != "assistant" or isinstance(prompt, str):
            raise RowError(origin, "completion", "field 'completion' must be a string, or one assistant message "
                                                 "after a message-list prompt")
        return answer_only(prompt, answer[0]["content"], origin)
    if shape == "messages":
        return _conversation_answer(_messages(value["messages"], "messages", origin), "messages", origin)
    if shape == "sharegpt_sft":
        turns = value["conversations"]
        if not isinstance(turns, list):
            raise RowError(origin, "conversations", f"field 'conversations' must be a list of turns, got {_type(turns)}")
        messages = tuple(_sharegpt_turn(t, f"conversations[{i}]", origin) for i, t in enumerate(turns))
        return _conversation_answer(messages, "conversations", origin)
    if shape == "preference:ranked":
        return answer_only(*best_answer(value, origin), origin)
    pair = to_pair(value, shape.split(":", 1)[1], origin)
    return answer_only(pair.prompt, pair.chosen, origin)


def load_sft_examples(path: str | Path, *, skip_invalid: bool = False,
                      columns: ColumnMap | None = None) -> LoadReport:
    """Read, map and adapt every row; a problem stops the load naming file:line and field, unless `skip_invalid`."""
    records = read_records(path)
    report = LoadReport(str(path), None, [], len(records), columns=columns)

    def adapt(value, origin: str):
        shape = sft_shape(value, origin)
        return shape, to_example(value, shape, origin)

    for record, example in adapted_rows(records, report, columns, adapt):
        if not example.answer.strip():
            report.problems.append(Problem(record.origin, None, "the answer is empty", "empty_completion"))
        else:
            report.examples.append(example)
    stop_on_problems(path, report.problems, report.examples, report.num_rows, "examples", skip_invalid)
    return report


def _spaced(answer: str) -> str:
    """The answer as it follows a feedback phrase: one space between them unless the answer brings its own."""
    return answer if answer[:1].isspace() else " " + answer


def coh_examples(pair: PreferencePair, positive: str, negative: str) -> list[SFTExample]:
    """Chain of Hindsight (Liu et al. 2023): one pair → two feedback-conditioned sequences, both orders.

    Worked example, positive "Good:", negative "Bad:", chosen "yes", rejected "no":
        "Good: yes\\nBad: no"   and   "Bad: no\\nGood: yes"
    Loss falls on " yes" and " no" (and the end of the sequence), never on the phrases "Good:", "\\nBad:" ….
    At inference the prompt is followed by the positive phrase and the model writes the answer.
    """
    helpful_first = ((positive, False), (_spaced(pair.chosen), True), ("\n" + negative, False),
                     (_spaced(pair.rejected), True))
    unhelpful_first = ((negative, False), (_spaced(pair.rejected), True), ("\n" + positive, False),
                       (_spaced(pair.chosen), True))
    return [SFTExample(pair.prompt, helpful_first, pair.origin + " (helpful first)"),
            SFTExample(pair.prompt, unhelpful_first, pair.origin + " (unhelpful first)")]


def load_coh_examples(path: str | Path, positive: str, negative: str, *, skip_invalid: bool = False,
                      columns: ColumnMap | None = None, pairs: str = "best-vs-worst") -> LoadReport:
    report = load_pairs(path, skip_invalid=skip_invalid, columns=columns, pairs=pairs)
    return replace(report, examples=[e for pair in report.pairs for e in coh_examples(pair, positive, negative)])
