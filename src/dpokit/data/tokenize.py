"""Pair (or SFT example) → token ids, with one truncation policy.

Conversational pairs, and (``chat=True``, the default of every run) text pairs when the tokenizer has a chat
template, their text prompt read as the conversation it stands for (data/templates.as_conversation): the chat
template renders prompt (with the generation prompt) and prompt + assistant answer; the completion is the text the
answer adds. Plain-text pairs (``chat=False``, or no template): prompt + completion is tokenized as one string,
then EOS is appended. Either way the prompt's tokens must be an exact prefix of the
full sequence's tokens; where a tokenizer or template breaks that at the boundary, the pair is tokenized
as prompt ids + completion ids (tokenized alone) and counted as ``boundary_retokenized``.

Truncation (as the reference DPO implementation; ``fit_lengths`` for pairs and SFT examples alike): if prompt +
longer completion exceeds ``max_length``, first cut the prompt from its START to ``max_prompt_length`` tokens (the
last turns matter most), then cut each completion from its END to fit ``max_length``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError
from ..types import PreferencePair, SFTExample, TokenizedExample, TokenizedPair
from .templates import as_chat, has_template, render_chat


@dataclass
class TokenizeReport:
    pairs: list[TokenizedPair]
    counts: Counter = field(default_factory=Counter)  # truncated_prompt, truncated_completion, boundary_retokenized, dropped_*
    problems: list[str] = field(default_factory=list)


def fit_lengths(n_prompt: int, n_answer: int, *, max_length: int,
                max_prompt_length: int | None) -> tuple[int, int] | None:
    """The truncation policy, in lengths: None when prompt + answer fit in ``max_length`` (nothing is cut); else
    (prompt tokens kept, from its end; room for answer tokens, kept from their start).

    The prompt is cut first, from its START to ``max_prompt_length`` (None: not cut), then the answer from its END
    to what is left of ``max_length``; a room below 1 means the prompt alone fills it.
        fit_lengths(30, 20, max_length=40, max_prompt_length=16)   → (16, 24)    prompt cut, answer fits
        fit_lengths(30, 20, max_length=40, max_prompt_length=None) → (30, 10)    answer cut to 10
        fit_lengths(10, 20, max_length=40, max_prompt_length=16)   → None
    """
    if n_prompt + n_answer <= max_length:
        return None
    kept = n_prompt if max_prompt_length is None else min(n_prompt, max_prompt_length)
    return kept, max_length - kept


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


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


def _texts(tokenizer, pair: PreferencePair, chat: bool):
    """(prompt_text, chosen_text, rejected_text, is_chat)."""
    messages = as_chat(tokenizer, pair.prompt, chat)
    if messages is None:
        return pair.prompt, pair.chosen, pair.rejected, False
    if isinstance(pair.prompt, str):  # as a chat turn, the space that joined a text answer to its prompt goes
        pair = PreferencePair(tuple(messages), pair.chosen.lstrip(), pair.rejected.lstrip(), pair.origin, pair.strength,
                              pair.label)
    if not has_template(tokenizer):
        raise DataError(f"{pair.origin}: conversational pair, but the tokenizer has no chat template; "
                        "use plain-text prompts or a model whose tokenizer_config.json has a chat_template")
    prompt_text = render_chat(tokenizer, pair.prompt)
    completions = []
    for answer in (pair.chosen, pair.rejected):
        full = render_chat(tokenizer, pair.prompt, answer)
        if not full.startswith(prompt_text):
            raise DataError(f"{pair.origin}: the chat template renders the prompt differently with and without "
                            "the answer, so prompt tokens are not a prefix of prompt+answer")
        completions.append(full[len(prompt_text):])
    return prompt_text, completions[0], completions[1], True


def tokenize_pair(tokenizer, pair: PreferencePair, *, max_length: int, max_prompt_length: int | None,
                  counts: Counter, chat: bool) -> TokenizedPair | str:
    """Token ids of one pair, truncated by the policy above; a string explains why the pair cannot fit."""
    prompt_text, chosen_text, rejected_text, is_chat = _texts(tokenizer, pair, chat)
    special = not is_chat  # the chat template already wrote any BOS
    prompt_ids = _ids(tokenizer, prompt_text, special=special)
    chosen_ids, rejected_ids = (
        _completion_ids(tokenizer, prompt_text, prompt_ids, text, special=special, add_eos=not is_chat, counts=counts)
        for text in (chosen_text, rejected_text))

    truncated = False
    longer = max(len(chosen_ids), len(rejected_ids))
    fit = fit_lengths(len(prompt_ids), longer, max_length=max_length, max_prompt_length=max_prompt_length)
    if fit is not None:
        kept, room = fit
        if kept < len(prompt_ids):
            prompt_ids = prompt_ids[len(prompt_ids) - kept:]
            counts["truncated_prompt"] += 1
            truncated = True
        if room < 1:
            return (f"{pair.origin}: prompt alone is {len(prompt_ids)} tokens, which leaves no room for an answer "
                    f"within max_length={max_length}; set --max-prompt-length below max_length or raise --max-length")
        if longer > room:
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            counts["truncated_completion"] += 1
            truncated = True
    if not prompt_ids:
        return f"{pair.origin}: the prompt tokenizes to no tokens (nothing to predict the first answer token from)"
    if not chosen_ids or not rejected_ids:
        return f"{pair.origin}: a completion tokenizes to no tokens"
    return TokenizedPair(tuple(prompt_ids), tuple(chosen_ids), tuple(rejected_ids), pair.origin, pair.strength, truncated,
                         pair.label)


def tokenize_pairs(tokenizer, pairs: list[PreferencePair], *, max_length: int, max_prompt_length: int | None,
                   skip_invalid: bool, chat: bool) -> TokenizeReport:
    report = TokenizeReport(pairs=[])
    for pair in pairs:
        result = tokenize_pair(tokenizer, pair, max_length=max_length, max_prompt_length=max_prompt_length,
                               counts=report.counts, chat=chat)
        if isinstance(result, str):
            if not skip_invalid:
                raise DataError(result + " (or pass --skip-invalid to drop such rows)")
            report.counts["dropped_too_long"] += 1
            report.problems.append(result)
        else:
            report.pairs.append(result)
    return report


def _example_pieces(tokenizer, example: SFTExample, chat: bool) -> tuple[str, list[tuple[str, bool]], bool]:
    """(prompt_text, answer pieces with their trained flags, is_chat). With a chat template, what the template
    writes after the answer (end-of-turn tokens) is trained, so the model learns to stop."""
    messages = as_chat(tokenizer, example.prompt, chat)
    if messages is None:
        return example.prompt, list(example.segments), False
    if isinstance(example.prompt, str):  # as for pairs: the joining space goes
        (first, trained), *rest = example.segments
        example = SFTExample(tuple(messages), ((first.lstrip(), trained), *rest), example.origin)
    if not has_template(tokenizer):
        raise DataError(f"{example.origin}: conversational example, but the tokenizer has no chat template; "
                        "use plain-text prompts or a model whose tokenizer_config.json has a chat_template")
    prompt_text = render_chat(tokenizer, example.prompt)
    full = render_chat(tokenizer, example.prompt, example.answer)
    at = full.find(example.answer, len(prompt_text)) if full.startswith(prompt_text) else -1
    if at < 0:
        raise DataError(f"{example.origin}: the chat template does not render the prompt as a prefix of prompt + "
                        "answer, or changes the answer's text; cannot tell which tokens are the answer")
    end = at + len(example.answer)
    pieces = [(full[len(prompt_text):at], False), *example.segments, (full[end:], True)]
    return prompt_text, pieces, True


def tokenize_example(tokenizer, example: SFTExample, *, max_length: int, max_prompt_length: int | None,
                     counts: Counter, chat: bool) -> TokenizedExample | str:
    """Token ids of prompt + answer pieces and, per token, whether it carries loss (prompt never does).

    Each piece's tokens are what tokenizing the text so far adds (where the tokenizer keeps the earlier tokens
    as a prefix; otherwise the piece is tokenized alone and counted as ``boundary_retokenized``). Plain-text
    examples end with a trained EOS. Truncation: the prompt is cut from its start to ``max_prompt_length`` (None:
    half of ``max_length``), then the sequence from its end to ``max_length``.
    """
    prompt_text, pieces, is_chat = _example_pieces(tokenizer, example, chat)
    special = not is_chat
    ids = _ids(tokenizer, prompt_text, special=special)
    n_prompt = len(ids)
    trained = [False] * n_prompt
    text = prompt_text
    for piece, train in pieces:
        if not piece:
            continue
        joint = _ids(tokenizer, text + piece, special=special)
        if joint[: len(ids)] == ids:
            new = joint[len(ids):]
        else:
            counts["boundary_retokenized"] += 1
            new = _ids(tokenizer, piece, special=False)
        ids += new
        trained += [train] * len(new)
        text += piece
    if not is_chat:
        ids.append(tokenizer.eos_token_id)
        trained.append(True)

    prompt_cap = max_prompt_length if max_prompt_length is not None else max_length // 2
    fit = fit_lengths(n_prompt, len(ids) - n_prompt, max_length=max_length, max_prompt_length=prompt_cap)
    truncated = fit is not None
    if fit is not None:
        kept, room = fit
        if kept < n_prompt:
            ids, trained = ids[n_prompt - kept:], trained[n_prompt - kept:]
            counts["truncated_prompt"] += 1
        if len(ids) - kept > room:
            ids, trained = ids[:kept + room], trained[:kept + room]
            counts["truncated_completion"] += 1
    if not any(trained[1:]):  # position 0 has nothing before it to predict it from
        return (f"{example.origin}: no answer tokens left within max_length={max_length} (prompt "
                f"{n_prompt} tokens); raise --max-length or lower --max-prompt-length")
    return TokenizedExample(tuple(ids), tuple(trained), example.origin, truncated)


def tokenize_examples(tokenizer, examples: list[SFTExample], *, max_length: int, max_prompt_length: int | None,
                      skip_invalid: bool, chat: bool) -> tuple[list[TokenizedExample], Counter]:
    out, counts = [], Counter()
    for example in examples:
        result = tokenize_example(tokenizer, example, max_length=max_length, max_prompt_length=max_prompt_length,
                                  counts=counts, chat=chat)
        if isinstance(result, str):
            if not skip_invalid:
                raise DataError(result + " (or pass --skip-invalid to drop such rows)")
            counts["dropped_too_long"] += 1
        else:
            out.append(result)
    return out, counts
