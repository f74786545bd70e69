"""`dpokit generate`, `chat` and `export` on a tiny random model and a LoRA adapter built here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpokit.cli import main
from dpokit.export import export
from dpokit.generate import (CohPhrases, coh_prefix, cut_at_negative, encode, generate, load_coh_phrases,
                             load_for_generation, render_prompt, sampling_args)
from tiny import make_adapter_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROMPTS = ["Hello, how are you?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model whose B matrices are non-zero, so it changes the outputs."""
    path = make_adapter_dir(tiny_model_dir, tmp_path_factory.mktemp("adapter"))
    (path / "dpokit_coh.json").write_text(json.dumps({"positive": "Good:", "negative": "Bad:"}))
    return path


def greedy_ids(model, tokenizer, prompts, n=12):
    batch = encode(tokenizer, [render_prompt(tokenizer, p) for p in prompts])
    out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:]


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---- export ---------------------------------------------------------------------------------------------------------

def test_merged_export_generates_the_tokens_of_base_plus_adapter(tiny_model_dir, adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    result = subprocess.run([sys.executable, "-m", "dpokit", "export", str(adapter_dir), "--out", str(out), "--merge"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "dpokit_coh.json"} <= names
    assert "adapter_config.json" not in names and not (tmp_path / "merged.tmp").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no peft needed
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template

    with_adapter, _ = load_for_generation(adapter_dir)
    base, _ = load_for_generation(tiny_model_dir)
    expected = greedy_ids(with_adapter, tokenizer, PROMPTS)
    assert torch.equal(greedy_ids(merged, tokenizer, PROMPTS), expected)
    assert not torch.equal(greedy_ids(base, tokenizer, PROMPTS), expected)  # the adapter does change the output


def test_adapter_only_export_reloads_with_the_same_logits(tiny_model_dir, adapter_dir, tmp_path):
    out = export(adapter_dir, tmp_path / "adapter-export")
    assert {p.name for p in out.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json",
                                                "tokenizer_config.json", "dpokit_coh.json"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert Path(config["base_model_name_or_path"]) == Path(tiny_model_dir).resolve()

    original, tokenizer = load_for_generation(adapter_dir)
    reloaded, _ = load_for_generation(out)
    base, _ = load_for_generation(tiny_model_dir)
    ids = encode(tokenizer, [render_prompt(tokenizer, p) for p in PROMPTS])
    with torch.no_grad():
        want = original(**ids).logits  # (B, T, V)
        torch.testing.assert_close(reloaded(**ids).logits, want, rtol=0, atol=1e-6)
        assert (base(**ids).logits - want).abs().max() > 1e-2


def test_export_of_a_run_uses_final_and_refuses_to_overwrite(tiny_model_dir, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "final")
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--merge"]) == 0  # full model: --merge is a re-save
    got, want = load_file(out / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    assert main(["export", str(run), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--overwrite" in lines[0] and str(out) in lines[0]
    assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 0


# ---- generate -------------------------------------------------------------------------------------------------------

@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS * 2)))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_seeded_sampling_repeats_and_temperature_zero_is_greedy(tiny_model_dir, prompts_file, tmp_path):
    common = ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts_file), "--max-new-tokens", "8",
              "--batch-size", "3"]
    a, b, c, greedy = (tmp_path / f"{n}.jsonl" for n in "abcg")
    assert main([*common, "--out", str(a), "--temperature", "1.0", "--seed", "7"]) == 0
    assert main([*common, "--out", str(b), "--temperature", "1.0", "--seed", "7"]) == 0
    assert main([*common, "--out", str(c), "--temperature", "1.0", "--seed", "8"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()  # the seed matters, so the equality above means something
    rows = read_jsonl(a)
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and [r["prompt"] for r in rows] == PROMPTS * 2
    assert all(isinstance(r["completion"], str) and r["completion"] for r in rows)

    assert main([*common, "--out", str(greedy), "--temperature", "0"]) == 0
    model, tokenizer = load_for_generation(tiny_model_dir)
    ids = [greedy_ids(model, tokenizer, [p], n=8)[0] for p in PROMPTS]  # one at a time: no padding involved
    want = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    assert [r["completion"] for r in read_jsonl(greedy)] == want * 2


@pytest.mark.parametrize("adapter", [False, True])
def test_k_samples_share_one_prompt_prefill_and_equal_k_copies_of_the_prompt(tiny_model_dir, adapter_dir, adapter):
    """per_prompt=k reads each prompt once (a KV cache repeated k times) and draws what k copies would: the same
    seeded samples, prompts of different lengths in one left-padded batch, through peft too."""
    model, tokenizer = load_for_generation(adapter_dir if adapter else tiny_model_dir)
    prompts = ["Hello, how are you?", "x", "A much longer prompt, so that the others are left-padded in the batch."]
    embed = model.get_input_embeddings()
    seen = []
    hook = embed.register_forward_hook(lambda module, args, out: seen.append(args[0].numel()))
    try:
        common = dict(temperature=1.0, seed=5, max_new_tokens=6, return_ids=True, template=False)
        copies = generate(model, tokenizer, [p for p in prompts for _ in range(3)], batch_size=9, **common)
        copies_tokens, seen[:] = sum(seen), []
        shared = generate(model, tokenizer, prompts, batch_size=9, per_prompt=3, **common)
        shared_tokens = sum(seen)
    finally:
        hook.remove()
    assert [(s.prompt_ids, s.completion_ids, s.text) for s in shared] == \
        [(s.prompt_ids, s.completion_ids, s.text) for s in copies]
    width = max(len(s.prompt_ids) for s in shared)
    # the prompt batch (3 × width) is read once, not 3 times; decoding reads the same 9 × new tokens on both sides
    assert copies_tokens - shared_tokens == 9 * width - 3 * (width - 1) - 9
    other = generate(model, tokenizer, prompts, batch_size=9, per_prompt=3, **{**common, "seed": 6})
    assert [s.completion_ids for s in other] != [s.completion_ids for s in shared]  # the seed matters


def test_bad_prompts_file_is_one_line_naming_file_line_and_field(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": 5}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(bad), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "prompts.jsonl:2" in lines[0] and "'prompt'" in lines[0], lines
    assert not out.exists()

    bad.write_text(json.dumps({"text": "no prompt field"}) + "\n")
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(bad), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "prompts.jsonl:1" in lines[0] and "missing" in lines[0], lines

    out.write_text("keep me\n")
    txt = tmp_path / "prompts.txt"
    txt.write_text("one\n\ntwo\n")
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(txt), "--out", str(out)]) == 2
    assert "--overwrite" in error_lines(capsys)[0] and out.read_text() == "keep me\n"
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(txt), "--out", str(out),
                 "--overwrite", "--max-new-tokens", "2"]) == 0
    assert [r["prompt"] for r in read_jsonl(out)] == ["one", "two"]


def test_bad_prompts_file_through_the_real_cli_has_no_traceback(tiny_model_dir, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": [{"role": "user"}]}\n')
    result = subprocess.run([sys.executable, "-m", "dpokit", "generate", "--model", str(tiny_model_dir),
                             "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "prompts.jsonl:2" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ---- Chain of Hindsight ---------------------------------------------------------------------------------------

def test_coh_prefix_and_cut_on_a_worked_example(tiny_tokenizer, adapter_dir, tiny_model_dir):
    phrases = CohPhrases()
    rendered = render_prompt(tiny_tokenizer, "Hi")
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert coh_prefix(rendered, phrases) == rendered + "A helpful answer:"
    assert cut_at_negative("Sure, here it is.  \nAn unhelpful answer: go away\nA helpful", phrases) == \
        "Sure, here it is."
    assert cut_at_negative("No negative here. ", phrases) == "No negative here."
    assert cut_at_negative("An unhelpful answer: at the start, not after a newline", phrases) == \
        "An unhelpful answer: at the start, not after a newline"
    assert load_coh_phrases(tiny_model_dir) == phrases  # no dpokit_coh.json: the defaults
    assert load_coh_phrases(adapter_dir) == CohPhrases("Good:", "Bad:")


def test_text_prompts_skip_the_template_on_request_messages_never(tiny_tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tiny_tokenizer, "Hi", template=False) == "Hi"
    assert render_prompt(tiny_tokenizer, messages, template=False) == render_prompt(tiny_tokenizer, "Hi")


def test_generate_with_coh_continues_after_the_positive_phrase_and_cuts(adapter_dir):
    model, tokenizer = load_for_generation(adapter_dir)  # the adapter makes the tiny model heed its context
    phrases = CohPhrases()
    batch = encode(tokenizer, [coh_prefix(render_prompt(tokenizer, "Hi"), phrases)])

    def by_hand(seed, **args):
        torch.manual_seed(seed)
        ids = model.generate(**batch, **sampling_args(model, tokenizer, max_new_tokens=10, top_p=1.0, **args))
        return tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    sampled = by_hand(5, temperature=1.0)
    assert generate(model, tokenizer, ["Hi"], max_new_tokens=10, temperature=1.0, seed=5, coh=phrases) == \
        [cut_at_negative(sampled, phrases)]
    greedy = by_hand(0, temperature=0)
    assert generate(model, tokenizer, ["Hi"], max_new_tokens=10, temperature=0, coh=phrases) == \
        [cut_at_negative(greedy, phrases)]
    assert generate(model, tokenizer, ["Hi"], max_new_tokens=10, temperature=0) != [greedy]  # the phrase counts


# ---- chat -----------------------------------------------------------------------------------------------------------

def test_chat_in_a_terminal_answers_resets_and_exits(tiny_model_dir):
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "dpokit", "chat", "--model", str(tiny_model_dir),
                                           "--max-new-tokens", "8", "--temperature", "1.0"],
                          env=ENV, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("you> ")
        child.sendline("Hello there")
        child.expect_exact("assistant> ")
        child.expect_exact("you> ")
        assert child.before.strip(), "empty answer"
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.expect_exact("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_chat_keeps_history_and_quits_cleanly_on_end_of_input(tiny_model_dir, monkeypatch, capsys):
    """Ctrl-D makes input() raise EOFError; fed here in-process to save a second interpreter start."""
    import builtins

    from dpokit import chat

    lines, seen = iter(["Hello", "Again"]), []

    def fake_input(prompt):
        assert prompt == "you> "
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    real_stream = chat.stream_reply

    def recording_stream(model, tokenizer, messages, **kwargs):
        seen.append([dict(m) for m in messages])
        return real_stream(model, tokenizer, messages, **kwargs)

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(chat, "stream_reply", recording_stream)
    assert chat.chat_loop(str(tiny_model_dir), system="Be brief.", max_new_tokens=4) == 0
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert seen[1][1]["content"] == "Hello" and seen[1][3]["content"] == "Again"
    assert capsys.readouterr().out.count("assistant> ") == 2


def test_long_history_drops_the_oldest_turns_and_keeps_the_system_message(tiny_tokenizer):
    from dpokit.chat import fit_history

    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": r, "content": f"{r} turn {i} " * 20} for i in range(3) for r in ("user", "assistant")]
    newest = {"role": "user", "content": "last question"}
    messages = [system, *turns, newest]
    assert fit_history(tiny_tokenizer, messages, None) == messages
    def size(conversation):
        return len(tiny_tokenizer(render_prompt(tiny_tokenizer, conversation), add_special_tokens=False)["input_ids"])

    budget = size([system, *turns[2:], newest])  # room for the last two exchanges only
    assert fit_history(tiny_tokenizer, messages, budget) == [system, *turns[2:], newest]
    assert fit_history(tiny_tokenizer, messages, 1) == [system, newest]  # never drops the question itself
