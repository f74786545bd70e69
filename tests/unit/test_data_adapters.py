"""detect_shape / to_pair: each accepted row shape becomes the exact PreferencePair expected, and each
type problem is a DataError naming the origin, the field, what was expected and what was found."""
from __future__ import annotations

import json

import pytest

from dpokit.data.adapters import RowError, detect_shape, to_pair
from dpokit.errors import DataError
from dpokit.types import PreferencePair

ORIGIN = "pairs.jsonl:4"


def adapt(row: dict, origin: str = ORIGIN) -> tuple[str, PreferencePair]:
    shape = detect_shape(row, origin)
    return shape, to_pair(row, shape, origin)


def adapt_error(row: dict) -> RowError:
    with pytest.raises(DataError) as info:
        adapt(row)
    assert isinstance(info.value, RowError)
    assert str(info.value).startswith(ORIGIN + ": ")
    return info.value


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- standard ------------------------------------------------------------------------------------


def test_standard_ignores_unknown_fields():
    row = {"prompt": "2+2?", "chosen": " 4", "rejected": " 5", "source_index": 27808}
    assert adapt(row) == ("standard", PreferencePair("2+2?", " 4", " 5", ORIGIN, None))


def test_standard_chosen_of_wrong_type():
    error = adapt_error({"prompt": "p", "chosen": 3, "rejected": "r"})
    assert str(error) == "pairs.jsonl:4: field 'chosen' must be a string, got int"
    assert error.field == "chosen"


def test_standard_missing_rejected():
    error = adapt_error({"prompt": "p", "chosen": "c"})
    assert str(error) == "pairs.jsonl:4: missing field 'rejected' (shape 'standard' needs prompt, chosen, rejected)"


def test_prompt_that_merely_starts_with_a_bracket_stays_text():
    row = {"prompt": "[INST] hi [/INST]", "chosen": "a", "rejected": "b"}
    assert adapt(row) == ("standard", PreferencePair("[INST] hi [/INST]", "a", "b", ORIGIN))


# --- conversational ------------------------------------------------------------------------------


def test_conversational_explicit_prompt():
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "ann"}],
        "chosen": [assistant("Hello!")],
        "rejected": [assistant("Go away.")],
    }
    shape, pair = adapt(row)
    assert shape == "conversational"
    # Extra message keys ("name") are dropped: a message is exactly role + content.
    assert pair == PreferencePair(
        ({"role": "system", "content": "Be brief."}, user("Hi")), "Hello!", "Go away.", ORIGIN, None
    )
    assert pair.is_conversational


def test_messages_is_an_alias_of_prompt():
    row = {"messages": [user("Hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    assert adapt(row) == ("conversational", PreferencePair((user("Hi"),), "a", "b", ORIGIN))


def test_implicit_prompt_is_the_longest_common_prefix():
    history = [user("Hi"), assistant("Hello, how can I help?"), user("Tell me a joke")]
    row = {"chosen": history + [assistant("Why did the chicken...")], "rejected": history + [assistant("No.")]}
    assert adapt(row) == ("conversational", PreferencePair(tuple(history), "Why did the chicken...", "No.", ORIGIN))


def test_implicit_prompt_with_identical_answers_stays_a_pair():
    # The prefix stops before the last message so validation can report the pair as identical.
    row = {"chosen": [user("Hi"), assistant("Same")], "rejected": [user("Hi"), assistant("Same")]}
    assert adapt(row) == ("conversational", PreferencePair((user("Hi"),), "Same", "Same", ORIGIN))


def test_implicit_prompt_remainder_must_be_one_assistant_message():
    row = {"chosen": [user("Hi"), assistant("a")], "rejected": [user("Hi"), assistant("b"), user("more")]}
    error = adapt_error(row)
    assert str(error) == (
        "pairs.jsonl:4: field 'rejected' must hold exactly one assistant message after the 1 shared prompt messages, got 2"
    )


def test_implicit_prompt_needs_a_shared_prefix():
    error = adapt_error({"chosen": [user("a"), assistant("b")], "rejected": [user("x"), assistant("y")]})
    assert "share no prompt messages" in str(error) and error.field == "chosen"


def test_csv_cells_holding_json_message_lists():
    row = {
        "prompt": json.dumps([user("Hi")]),
        "chosen": json.dumps([assistant("Hello")]),
        "rejected": json.dumps([assistant("Bye")]),
        "margin": "0.5",
    }
    assert adapt(row, "chat.csv:2") == ("conversational", PreferencePair((user("Hi"),), "Hello", "Bye", "chat.csv:2", 0.5))


def test_chosen_with_two_messages_is_an_error():
    row = {"prompt": [user("Hi")], "chosen": [assistant("a"), assistant("b")], "rejected": [assistant("c")]}
    error = adapt_error(row)
    assert str(error) == "pairs.jsonl:4: field 'chosen' must hold exactly one assistant message, got 2"


def test_chosen_with_a_user_role_is_an_error():
    error = adapt_error({"prompt": [user("Hi")], "chosen": [user("a")], "rejected": [assistant("c")]})
    assert str(error) == "pairs.jsonl:4: field 'chosen[0].role' must be 'assistant', got 'user'"


def test_unknown_role_is_an_error():
    error = adapt_error({"prompt": [{"role": "tool", "content": "x"}], "chosen": [assistant("a")],
                         "rejected": [assistant("b")]})
    assert str(error) == "pairs.jsonl:4: field 'prompt[0].role' must be one of system, user, assistant, got str 'tool'"


def test_content_must_be_a_string():
    error = adapt_error({"prompt": [user("Hi"), {"role": "user", "content": None}], "chosen": [assistant("a")],
                         "rejected": [assistant("b")]})
    assert str(error) == "pairs.jsonl:4: field 'prompt[1].content' must be a string, got null"
    assert error.field == "prompt[1].content"


def test_chosen_text_with_a_message_prompt_is_an_error():
    error = adapt_error({"prompt": [user("Hi")], "chosen": "a", "rejected": [assistant("b")]})
    assert str(error) == "pairs.jsonl:4: field 'chosen' must be a list of {role, content} messages, got str 'a'"


def test_empty_prompt_list_is_an_error():
    error = adapt_error({"prompt": [], "chosen": [assistant("a")], "rejected": [assistant("b")]})
    assert str(error) == "pairs.jsonl:4: field 'prompt' is an empty message list"


# --- hh_rlhf -------------------------------------------------------------------------------------


def test_hh_rlhf_single_turn():
    row = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi there\n\nAssistant: What?"}
    assert adapt(row) == ("hh_rlhf", PreferencePair("\n\nHuman: Hi there\n\nAssistant:", " Hello!", " What?", ORIGIN))


def test_hh_rlhf_answers_that_start_alike_keep_their_common_start():
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    row = {"chosen": prompt + " You will need flour, water and yeast.", "rejected": prompt + " You will need a bakery."}
    _, pair = adapt(row)
    assert pair.prompt == prompt
    assert pair.chosen == " You will need flour, water and yeast."
    assert pair.rejected == " You will need a bakery."


def test_hh_rlhf_multi_turn_splits_at_the_last_assistant_turn():
    history = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: What is the capital of France?\n\nAssistant:"
    row = {"chosen": history + " Paris.", "rejected": history + " I don't know."}
    assert adapt(row) == ("hh_rlhf", PreferencePair(history, " Paris.", " I don't know.", ORIGIN))


def test_hh_rlhf_rejected_with_a_different_history_uses_chosens_prompt():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: Knock knock."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hey.\n\nHuman: Joke?\n\nAssistant: No."
    _, pair = adapt({"chosen": chosen, "rejected": rejected})
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == (" Knock knock.", " No.")


def test_hh_rlhf_transcript_without_assistant_turn():
    error = adapt_error({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "just text"})
    assert error.field == "rejected"
    assert "field 'rejected' has no '\\n\\nAssistant:' turn" in str(error)


def test_hh_rlhf_missing_rejected():
    error = adapt_error({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello"})
    assert str(error) == "pairs.jsonl:4: missing field 'rejected' (shape 'hh_rlhf' needs chosen, rejected)"


# --- sharegpt ------------------------------------------------------------------------------------


def test_sharegpt_maps_roles():
    row = {
        "conversations": [
            {"from": "system", "value": "Be kind."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "user", "value": "Joke?"},
        ],
        "chosen": {"from": "gpt", "value": "Knock knock."},
        "rejected": {"from": "assistant", "value": "No."},
    }
    expected_prompt = ({"role": "system", "content": "Be kind."}, user("Hi"), assistant("Hello"), user("Joke?"))
    assert adapt(row) == ("sharegpt", PreferencePair(expected_prompt, "Knock knock.", "No.", ORIGIN))


def test_sharegpt_system_column_is_prepended():
    row = {"system": "Be kind.", "conversations": [{"from": "human", "value": "Hi"}],
           "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}
    _, pair = adapt(row)
    assert pair.prompt == ({"role": "system", "content": "Be kind."}, user("Hi"))


def test_sharegpt_unknown_from():
    row = {"conversations": [{"from": "bot", "value": "Hi"}], "chosen": {"from": "gpt", "value": "a"},
           "rejected": {"from": "gpt", "value": "b"}}
    error = adapt_error(row)
    assert str(error).startswith("pairs.jsonl:4: field 'conversations[0].from' must be one of human, user, gpt")
    assert str(error).endswith("got str 'bot'")


def test_sharegpt_chosen_from_human_is_an_error():
    row = {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "human", "value": "a"},
           "rejected": {"from": "gpt", "value": "b"}}
    assert str(adapt_error(row)) == "pairs.jsonl:4: field 'chosen.from' must be 'gpt' or 'assistant', got 'human'"


def test_sharegpt_value_must_be_a_string():
    row = {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "a"},
           "rejected": {"from": "gpt", "value": ["b"]}}
    assert str(adapt_error(row)) == "pairs.jsonl:4: field 'rejected.value' must be a string, got list"


# --- openai --------------------------------------------------------------------------------------


def test_openai_preference_format():
    row = {
        "input": {"messages": [user("Hello, can you tell me how cold San Francisco is today?")], "tools": [],
                  "parallel_tool_calls": True},
        "preferred_output": [assistant("Today in San Francisco, it is not quite cold as expected.")],
        "non_preferred_output": [assistant("It is not particularly cold in San Francisco today.")],
    }
    assert adapt(row) == ("openai", PreferencePair(
        (user("Hello, can you tell me how cold San Francisco is today?"),),
        "Today in San Francisco, it is not quite cold as expected.",
        "It is not particularly cold in San Francisco today.",
        ORIGIN,
    ))


def test_openai_input_without_messages():
    row = {"input": "hi", "preferred_output": [assistant("a")], "non_preferred_output": [assistant("b")]}
    assert str(adapt_error(row)) == "pairs.jsonl:4: field 'input' must be an object with 'messages', got str 'hi'"


def test_openai_missing_non_preferred_output():
    row = {"input": {"messages": [user("hi")]}, "preferred_output": [assistant("a")]}
    error = adapt_error(row)
    assert error.field == "non_preferred_output"
    assert "missing field 'non_preferred_output' (shape 'openai' needs" in str(error)


# --- margins -------------------------------------------------------------------------------------

BASE = {"prompt": "p", "chosen": "c", "rejected": "r"}


@pytest.mark.parametrize(
    "extra, margin",
    [
        ({"margin": 2}, 2.0),
        ({"margin": -0.25}, -0.25),
        ({"score_chosen": 9.0, "score_rejected": 7.5}, 1.5),
        ({"metadata": {"score_chosen": 8, "score_rejected": 8}}, 0.0),
        ({"margin": "1.5"}, 1.5),  # CSV writes every value as text
        ({"margin": "", "metadata": "not a dict"}, None),
        ({"margin": 3.0, "score_chosen": 9, "score_rejected": 1}, 3.0),  # an explicit margin wins
    ],
)
def test_margin_sources(extra, margin):
    assert adapt({**BASE, **extra})[1].strength == margin


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"margin": True}, "field 'margin' must be a finite number, got bool True"),
        ({"margin": "high"}, "field 'margin' must be a finite number, got str 'high'"),
        ({"margin": float("nan")}, "field 'margin' must be a finite number, got float"),
        ({"metadata": {"score_chosen": 9, "score_rejected": [1]}},
         "field 'metadata.score_rejected' must be a finite number, got list"),
        ({"score_chosen": 9}, "missing field 'score_rejected' (a margin needs both score_chosen and score_rejected)"),
    ],
)
def test_bad_margins(extra, message):
    assert str(adapt_error({**BASE, **extra})) == f"{ORIGIN}: {message}"


# --- detection -----------------------------------------------------------------------------------


def test_row_that_fits_no_shape_lists_shapes_and_its_keys():
    error = adapt_error({"instruction": "x", "output": "y"})
    message = str(error)
    assert "row fits no known shape (its keys: instruction, output)" in message
    for shape in ("standard", "conversational", "hh_rlhf", "sharegpt", "openai"):
        assert shape in message


def test_to_pair_rejects_an_unknown_shape_name():
    with pytest.raises(ValueError, match="unknown shape 'alpaca'"):
        to_pair(BASE, "alpaca", ORIGIN)


def test_implicit_prompt_matches_trl_extract_prompt():
    trl_data_utils = pytest.importorskip("trl.data_utils")
    history = [user("Hi"), assistant("Hello"), user("Colour of the sky?")]
    cases = [
        {"chosen": history + [assistant("Blue.")], "rejected": history + [assistant("Green.")]},
        {"chosen": [user("Hi"), assistant("Same")], "rejected": [user("Hi"), assistant("Same")]},
    ]
    for row in cases:
        expected = trl_data_utils.extract_prompt(row)
        _, pair = adapt(row)
        assert list(pair.prompt) == expected["prompt"]
        assert [assistant(pair.chosen)] == expected["chosen"]
        assert [assistant(pair.rejected)] == expected["rejected"]
