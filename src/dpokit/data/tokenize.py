"""Pair → token ids, with one truncation policy.

Plain-text pairs: prompt + completion is tokenized as one string, then EOS is appended. Conversational
pairs: the chat template renders prompt (with the generation prompt) and prompt + assistant answer; the
completion is the text the answer adds. Either way the prompt's tokens must be an exact prefix of the
full sequence's tokens; where a tokenizer or template breaks that at the boundary, the pair is tokenized
as prompt ids + completion ids (tokenized alone) and counted as ``boundary_retokenized``.

Truncation (as the reference DPO implementation): if prompt + longer completion exceeds ``max_length``,
first cut the prompt from its START to ``max_prompt_length`` tokens (the last turns matter most), then
cut each completion from its END to fit ``max_length``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError
from ..types import PreferencePair, TokenizedPair


@dataclass
class TokenizeReport:
    pairs: list[TokenizedPair]
    counts: Counter = field(default_factory=Counter)  # truncated_prompt, truncated_completion, boundary_retokenized, dropped_*
    problems: list[str] = field(default_factory=list)


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _render_chat(tokenizer, messages, answer: str | None) -> str:
    msgs = [dict(m) for m in messages]
    if answer is None:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    msgs.append({"role": "assistant", "content": answer})
    return tokenizer.apply_chat_template(msgs, tokenize=False)


def _completion_ids(tokenizer, prompt_text: str, prompt_ids: list[int], completion_text: str, *, special: bool,
                    add_eos: bool, counts: Counter) -> list[int]:
    """Completion token ids such that prompt ids + these ids is the joint tokenization (where the tokenizer allows)."""
    full_ids = _ids(tokenizer, prompt_text + completion_text, special=special)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        completion_ids = full_ids[len(prompt_ids):]
    else:  # a merge across the boundary: keep the prompt's own tokens
        counts["boundary_retokenized"] += 1
        completion_ids = _ids(tokenizer, completion_text, special=False)
    if add_eos and (not completion_ids or completion_ids[-1] != tokenizer.eos_token_id):
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return completion_ids


def _texts(tokenizer, pair: PreferencePair):
    """(prompt_text, chosen_text, rejected_text, is_chat)."""
    if not pair.is_conversational:
        return pair.prompt, pair.chosen, pair.rejected, False
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{pair.origin}: conversational pair, but the tokenizer has no chat template; "
                        "use plain-text prompts or a model whose tokenizer_config.json has a chat_template")
    prompt_text = _render_chat(tokenizer, pair.prompt, None)
    completions = []
    for answer in (pair.chosen, pair.rejected):
        full = _render_chat(tokenizer, pair.prompt, answer)
        if not full.startswith(prompt_text):
            raise DataError(f"{pair.origin}: the chat template renders the prompt differently with and without "
                            "the answer, so prompt tokens are not a prefix of prompt+answer")
        completions.append(full[len(prompt_text):])
    return prompt_text, completions[0], completions[1], True


def tokenize_pair(tokenizer, pair: PreferencePair, *, max_length: int, max_prompt_length: int | None,
                  counts: Counter) -> TokenizedPair | str:
    """Token ids of one pair, truncated by the policy above; a string explains why the pair cannot fit."""
    prompt_text, chosen_text, rejected_text, is_chat = _texts(tokenizer, pair)
    special = not is_chat  # the chat template already wrote any BOS
    prompt_ids = _ids(tokenizer, prompt_text, special=special)
    chosen_ids, rejected_ids = (
        _completion_ids(tokenizer, prompt_text, prompt_ids, text, special=special, add_eos=not is_chat, counts=counts)
        for text in (chosen_text, rejected_text))

    truncated = False
    if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length:
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            counts["truncated_prompt"] += 1
            truncated = True
        room = max_length - len(prompt_ids)
        if room < 1:
            return (f"{pair.origin}: prompt alone is {len(prompt_ids)} tokens, which leaves no room for an answer "
                    f"within max_length={max_length}; set --max-prompt-length below max_length or raise --max-length")
        if max(len(chosen_ids), len(rejected_ids)) > room:
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            counts["truncated_completion"] += 1
            truncated = True
    if not prompt_ids:
        return f"{pair.origin}: the prompt tokenizes to no tokens (nothing to predict the first answer token from)"
    if not chosen_ids or not rejected_ids:
        return f"{pair.origin}: a completion tokenizes to no tokens"
    return TokenizedPair(tuple(prompt_ids), tuple(chosen_ids), tuple(rejected_ids), pair.origin, pair.margin, truncated)


def tokenize_pairs(tokenizer, pairs: list[PreferencePair], *, max_length: int, max_prompt_length: int | None,
                   skip_invalid: bool) -> TokenizeReport:
    report = TokenizeReport(pairs=[])
    for pair in pairs:
        result = tokenize_pair(tokenizer, pair, max_length=max_length, max_prompt_length=max_prompt_length,
                               counts=report.counts)
        if isinstance(result, str):
            if not skip_invalid:
                raise DataError(result + " (or pass --skip-invalid to drop such rows)")
            report.counts["dropped_too_long"] += 1
            report.problems.append(result)
        else:
            report.pairs.append(result)
    return report
