"""SFT and Chain of Hindsight: which tokens carry loss, data shapes, and padded = packed log-probs."""
import gzip
import json
from collections import Counter

import pytest
import torch

from dpokit.data.collate import collate_sequences
from dpokit.data.sft import coh_examples, load_sft_examples
from dpokit.data.tokenize import tokenize_example
from dpokit.errors import DataError
from dpokit.logprobs import sequence_logps
from dpokit.losses import sft_nll
from dpokit.types import PreferencePair, SFTExample
from tiny import SHARED_DATA, make_model


def tokenize(tok, example, max_length=512, max_prompt_length=None, chat=False):
    return tokenize_example(tok, example, max_length=max_length, max_prompt_length=max_prompt_length, counts=Counter(),
                            chat=chat)


def spans(tok, tokenized):
    """(untrained text, trained text), each the decoded concatenation of its tokens."""
    ids, mask = tokenized.input_ids, tokenized.trained
    return (tok.decode([i for i, m in zip(ids, mask) if not m]), tok.decode([i for i, m in zip(ids, mask) if m]))


def test_plain_prompt_carries_no_loss_and_eos_does(tiny_tokenizer):
    tok = tiny_tokenizer
    example = SFTExample("Human: hi there\n\nAssistant:", ((" hello friend", True),), "x:1")
    t = tokenize(tok, example)
    prompt_ids = tok("Human: hi there\n\nAssistant:")["input_ids"]
    assert list(t.input_ids[:len(prompt_ids)]) == prompt_ids
    assert not any(t.trained[:len(prompt_ids)])  # every prompt token is masked
    assert all(t.trained[len(prompt_ids):])  # every answer token and the EOS carry loss
    assert t.input_ids[-1] == tok.eos_token_id
    assert spans(tok, t) == ("Human: hi there\n\nAssistant:", " hello friend" + tok.eos_token)


def test_chat_template_tokens_of_the_prompt_are_masked_and_end_of_turn_is_trained(tiny_tokenizer):
    tok = tiny_tokenizer
    example = SFTExample(({"role": "user", "content": "What is 2+2?"},), (("It is 4.", True),), "x:2")
    untrained, trained = spans(tok, tokenize(tok, example))
    assert untrained == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert trained == "It is 4.<|im_end|>\n"


def test_coh_loss_mask_covers_exactly_the_answer_spans(tiny_tokenizer):
    """Worked example: prompt "Q: colour?\\n", positive "Good:", negative "Bad:", chosen "blue", rejected "red".
    Sequence 1 = "Q: colour?\\nGood: blue\\nBad: red<eos>"; loss on " blue", " red" and <eos> only."""
    tok = tiny_tokenizer
    pair = PreferencePair("Q: colour?\n", "blue", "red", "pairs.jsonl:1")
    helpful_first, unhelpful_first = coh_examples(pair, "Good:", "Bad:")
    assert helpful_first.answer == "Good: blue\nBad: red"
    assert unhelpful_first.answer == "Bad: red\nGood: blue"
    t = tokenize(tok, helpful_first)
    # token by token: a token carries loss exactly when it lies inside an answer span (or is the final EOS)
    text, flags = "", []
    for i, trained in zip(t.input_ids, t.trained):
        piece = tok.decode([i])
        flags.append((piece, trained))
        text += piece
    assert text == "Q: colour?\nGood: blue\nBad: red" + tok.eos_token
    assert "".join(p for p, m in flags if m) == " blue red" + tok.eos_token
    assert "".join(p for p, m in flags if not m) == "Q: colour?\nGood:\nBad:"
    assert spans(tok, tokenize(tok, unhelpful_first))[1] == " red blue" + tok.eos_token
    assert coh_examples(PreferencePair("Q", " x", " y", "o"), "G:", "B:")[0].answer == "G: x\nB: y"  # no double space


def test_truncation_cuts_prompt_start_then_sequence_end(tiny_tokenizer):
    tok = tiny_tokenizer
    example = SFTExample("word " * 50, (("answer " * 50, True),), "x:3")
    t = tokenize(tok, example, max_length=40, max_prompt_length=10)
    assert len(t.input_ids) == 40 and t.truncated
    assert t.trained.index(True) == 10  # the prompt kept its last 10 tokens
    too_long = tokenize(tok, SFTExample("word " * 50, (("a", True),), "x:4"), max_length=20, max_prompt_length=19)
    # the prompt keeps its last 19 tokens and the answer its first token ("a"); its EOS is cut
    assert not isinstance(too_long, str) and too_long.truncated
    assert too_long.trained == (False,) * 19 + (True,)
    assert too_long.input_ids[-1] == tok("a").input_ids[0]


def test_packed_rows_give_the_same_logps_as_padded_rows(tiny_tokenizer):
    tok = tiny_tokenizer
    model = make_model(len(tok), hidden=64)
    examples = [tokenize(tok, SFTExample(f"Question {i}: " + "why " * i, ((" because " * (i + 1), True),), f"x:{i}"))
                for i in range(5)]
    padded = collate_sequences(examples, tok.pad_token_id)
    packed = collate_sequences(examples, tok.pad_token_id, row_tokens=64)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # really packed
    with torch.no_grad():
        a, na = sequence_logps(model, padded)
        b, nb = sequence_logps(model, packed)
    assert torch.equal(na, nb)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sft_loss_is_the_mean_nll_of_answer_tokens_only(tiny_tokenizer):
    """The loss equals log-softmax over answer positions only, computed the obvious way; counting the prompt too
    would give a different number, so this test fails if prompt tokens leak into the loss."""
    tok = tiny_tokenizer
    model = make_model(len(tok), hidden=64)
    examples = [tokenize(tok, SFTExample("Tell me about cats and dogs please.", ((" Cats purr.", True),), "x:1")),
                tokenize(tok, SFTExample("Hi", ((" Hello there, how are you?", True),), "x:2"))]
    batch = collate_sequences(examples, tok.pad_token_id)
    with torch.no_grad():
        loss = sft_nll(*sequence_logps(model, batch))
        nll_answer, nll_all = [], []
        for e in examples:
            ids = torch.tensor([e.input_ids])
            lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            nll_answer += [-lp[t - 1] for t in range(1, len(e.input_ids)) if e.trained[t]]
            nll_all += list(-lp)
    torch.testing.assert_close(loss, torch.stack(nll_answer).mean(), rtol=1e-5, atol=1e-6)
    assert abs(float(loss) - float(torch.stack(nll_all).mean())) > 1e-3


def test_sft_shapes_load(tmp_path):
    rows = [
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
        {"prompt": "Say hi", "completion": " hi"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]},
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
    ]
    shapes = []
    for i, row in enumerate(rows):
        path = tmp_path / f"d{i}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        report = load_sft_examples(path)
        shapes.append(report.shape)
        assert report.examples[0].answer.strip() in ("4", "hi", "a", "good")
    assert shapes == ["alpaca", "prompt_completion", "messages", "sharegpt_sft", "preference:standard"]
    alpaca = load_sft_examples(tmp_path / "d0.jsonl").examples[0]
    assert alpaca.prompt == ({"role": "user", "content": "Add\n\n2 and 2"},)


def test_bad_sft_row_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a", "completion": 3}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'completion'"):
        load_sft_examples(path)


def test_alpaca_demo_loads_whole():
    path = SHARED_DATA / "llamafactory-demo" / "alpaca_en_demo.json.gz"
    if not path.is_file():
        pytest.skip("shared data not present")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        n = len(json.load(f))
    report = load_sft_examples(path)
    assert report.shape == "alpaca" and len(report.examples) == n
