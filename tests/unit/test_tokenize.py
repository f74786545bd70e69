from collections import Counter

import pytest

from dpokit.data.tokenize import fit_lengths, tokenize_example, tokenize_pair, tokenize_pairs
from dpokit.errors import DataError
from dpokit.types import PreferencePair, SFTExample


def tok_pair(tokenizer, pair, max_length=512, max_prompt_length=256, chat=False):
    counts = Counter()
    return tokenize_pair(tokenizer, pair, max_length=max_length, max_prompt_length=max_prompt_length, counts=counts, chat=chat), counts


def test_plain_text_prompt_is_prefix_and_eos_appended(tiny_tokenizer):
    pair = PreferencePair("\n\nHuman: hi there\n\nAssistant:", " Hello! How can I help?", " Go away.", "x:1")
    t, counts = tok_pair(tiny_tokenizer, pair)
    full = tiny_tokenizer(pair.prompt + pair.chosen, add_special_tokens=True)["input_ids"]
    assert list(t.prompt_ids + t.chosen_ids) == full + [tiny_tokenizer.eos_token_id]
    assert t.rejected_ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(t.chosen_ids[:-1]) == pair.chosen
    assert counts["boundary_retokenized"] == 0


def test_conversational_uses_chat_template(tiny_tokenizer):
    pair = PreferencePair(({"role": "user", "content": "hi"},), "Hello!", "No.", "x:2")
    t, _ = tok_pair(tiny_tokenizer, pair)
    assert tiny_tokenizer.decode(t.prompt_ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer.decode(t.chosen_ids) == "Hello!<|im_end|>\n"
    assert tiny_tokenizer.decode(t.rejected_ids) == "No.<|im_end|>\n"


def test_truncation_cuts_prompt_start_then_completion_end(tiny_tokenizer):
    prompt = "\n\nHuman: " + "one two three four five six seven eight nine ten " * 6 + "\n\nAssistant:"
    pair = PreferencePair(prompt, " " + "alpha beta gamma delta " * 10, " short", "x:3")
    full_prompt = tiny_tokenizer(prompt)["input_ids"]
    t, counts = tok_pair(tiny_tokenizer, pair, max_length=40, max_prompt_length=16)
    assert list(t.prompt_ids) == full_prompt[-16:]  # the end of the prompt is kept
    assert len(t.prompt_ids) + len(t.chosen_ids) == 40  # chosen cut from its end to fit
    assert t.truncated and counts["truncated_prompt"] == 1 and counts["truncated_completion"] == 1
    assert len(t.rejected_ids) < 24  # the short answer is untouched


def test_prompt_alone_too_long_is_reported_or_dropped(tiny_tokenizer):
    pair = PreferencePair("word " * 100, " a", " b", "data.jsonl:7")
    with pytest.raises(DataError, match="data.jsonl:7"):
        tokenize_pairs(tiny_tokenizer, [pair], max_length=20, max_prompt_length=None, skip_invalid=False, chat=False)
    report = tokenize_pairs(tiny_tokenizer, [pair], max_length=20, max_prompt_length=None, skip_invalid=True,
                            chat=False)
    assert report.pairs == [] and report.counts["dropped_too_long"] == 1


def test_fit_lengths_cuts_the_prompt_start_first_then_the_answer_end():
    assert fit_lengths(10, 20, max_length=40, max_prompt_length=16) is None  # fits: nothing cut
    assert fit_lengths(30, 20, max_length=40, max_prompt_length=16) == (16, 24)  # 16 + 20 ≤ 40: the answer is whole
    assert fit_lengths(30, 20, max_length=40, max_prompt_length=25) == (25, 15)  # 25 + 20 > 40: 5 answer tokens go
    assert fit_lengths(30, 20, max_length=40, max_prompt_length=None) == (30, 10)  # no prompt cap: all cut from answer
    assert fit_lengths(50, 5, max_length=40, max_prompt_length=None) == (50, -10)  # the prompt alone is too long


def test_pairs_and_sft_examples_truncate_by_the_same_policy(tiny_tokenizer):
    prompt = "\n\nHuman: " + "one two three four five six seven eight nine ten " * 6 + "\n\nAssistant:"
    answer = " " + "alpha beta gamma delta " * 10
    for max_prompt_length in (16, 30):
        pair, _ = tok_pair(tiny_tokenizer, PreferencePair(prompt, answer, " short", "x:1"), max_length=40,
                           max_prompt_length=max_prompt_length)
        example = tokenize_example(tiny_tokenizer, SFTExample(prompt, ((answer, True),), "x:1"), max_length=40,
                                   max_prompt_length=max_prompt_length, counts=Counter(), chat=False)
        assert pair.prompt_ids + pair.chosen_ids == example.input_ids
        assert example.trained == (False,) * max_prompt_length + (True,) * (40 - max_prompt_length)


HH = "\n\nHuman: hi there\n\nAssistant: Hello.\n\nHuman: help me\n\nAssistant:"
TURNS = ({"role": "user", "content": "hi there"}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "help me"})


def test_by_default_a_text_prompt_is_trained_as_the_conversation_it_stands_for(tiny_tokenizer):
    """chat=True (every run's default): an hh-rlhf transcript becomes its turns, other text one user turn, answers
    lose the joining space; exactly the ids of the same pair written as messages."""
    as_messages, _ = tok_pair(tiny_tokenizer, PreferencePair(TURNS, "Sure.", "No.", "x"), chat=True)
    from_text, _ = tok_pair(tiny_tokenizer, PreferencePair(HH, " Sure.", " No.", "x"), chat=True)
    assert from_text == as_messages
    assert tiny_tokenizer.decode(from_text.prompt_ids).count("<|im_start|>user") == 2
    one_turn, _ = tok_pair(tiny_tokenizer, PreferencePair("What is tea?", " A drink.", " A car.", "y"), chat=True)
    assert tiny_tokenizer.decode(one_turn.prompt_ids) == "<|im_start|>user\nWhat is tea?<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer.decode(one_turn.chosen_ids) == "A drink.<|im_end|>\n"
    verbatim, _ = tok_pair(tiny_tokenizer, PreferencePair("What is tea?", " A drink.", " A car.", "y"), chat=False)
    assert "<|im_start|>" not in tiny_tokenizer.decode(verbatim.prompt_ids)


def test_sft_examples_follow_the_same_rule(tiny_tokenizer):
    example = SFTExample(HH, ((" Sure.", True),), "x")
    chat = tokenize_example(tiny_tokenizer, example, max_length=512, max_prompt_length=None, counts=Counter(),
                            chat=True)
    pair, _ = tok_pair(tiny_tokenizer, PreferencePair(HH, " Sure.", " No.", "x"), chat=True, max_prompt_length=None)
    assert chat.input_ids == pair.prompt_ids + pair.chosen_ids
    assert chat.trained == (False,) * len(pair.prompt_ids) + (True,) * len(pair.chosen_ids)


def test_a_tokenizer_without_a_template_trains_text_verbatim_whatever_chat_says(tiny_tokenizer):
    import copy

    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    pair = PreferencePair(HH, " Sure.", " No.", "x")
    assert tok_pair(plain, pair, chat=True)[0] == tok_pair(plain, pair, chat=False)[0]
