"""Training and use agree on the chat template (#16 item 6): a run records whether its text prompts went through
the template, and `generate`, `chat`, `eval` and `score` on that run render prompts the way it trained them."""
import json
from collections import Counter

import pytest
import torch
import yaml

from dpokit.cli import main
from dpokit.data.templates import as_transcript
from dpokit.data.tokenize import tokenize_pair
from dpokit.generate import load_for_generation
from dpokit.models import trained_verbatim
from dpokit.types import PreferencePair
from test_cli_dpo import dpokit, pairs_file  # noqa: F401  (pairs_file is a fixture)

HH = "\n\nHuman: What should I pack for a day at the sea?\n\nAssistant:"
STEPS = ("--max-steps", 1, "--batch-size", 4, "--max-length", 128, "--max-prompt-length", 64, "--eval-fraction", 0,
         "--probe-prompts", 0, "--learning-rate", 1e-3)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, pairs_file, tmp_path_factory):  # noqa: F811
    """One step of dpo on hh-rlhf transcripts: by default (through the template) and with --no-chat-template."""
    folder = tmp_path_factory.mktemp("template")
    made = {}
    for name, flags in (("chat", ()), ("verbatim", ("--no-chat-template",))):
        run = folder / name
        result = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", run, *STEPS, *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        made[name] = run
    return made


def greedy_from_ids(run, prompt_ids, n=8):
    model, tokenizer = load_for_generation(run)
    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt_ids)]), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


def trained_prompt_ids(run, chat: bool):
    _, tokenizer = load_for_generation(run)
    pair = tokenize_pair(tokenizer, PreferencePair(HH, " a", " b", "x"), max_length=512, max_prompt_length=None,
                         counts=Counter(), chat=chat)
    return pair.prompt_ids


def test_the_run_records_whether_its_prompts_went_through_the_template(runs):
    for name, used in (("chat", True), ("verbatim", False)):
        summary = json.loads((runs[name] / "summary.json").read_text())
        assert summary["chat_template"] is used
        assert yaml.safe_load((runs[name] / "config.yaml").read_text())["no_chat_template"] is (not used)
        assert trained_verbatim(runs[name]) is (not used) and trained_verbatim(runs[name] / "final") is (not used)


@pytest.mark.parametrize("name", ["chat", "verbatim"])
def test_generate_on_a_run_continues_the_prompt_tokens_its_training_saw(runs, name, tmp_path):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(json.dumps({"prompt": HH}) + "\n")
    assert main(["generate", "--model", str(runs[name]), "--prompts", str(prompts), "--output", str(out),
                 "--temperature", "0", "--max-new-tokens", "8"]) == 0
    completion = json.loads(out.read_text())["completion"]
    trained = greedy_from_ids(runs[name], trained_prompt_ids(runs[name], chat=name == "chat"))
    other = greedy_from_ids(runs[name], trained_prompt_ids(runs[name], chat=name != "chat"))
    assert trained != other  # the two renderings lead somewhere different, so the equality below means something
    assert completion.strip() == trained.strip()


def typed(*lines):
    """input() that returns these lines, then Ctrl-D."""
    pending = list(lines)

    def fake_input(prompt=""):
        if not pending:
            raise EOFError
        return pending.pop(0)
    return fake_input


def test_chat_sends_a_verbatim_run_the_transcript_it_trained_on(runs, monkeypatch, capsys):
    from dpokit import chat

    sent = []

    def recording_stream(model, tokenizer, prompt, **kwargs):
        sent.append((prompt if isinstance(prompt, str) else list(prompt), kwargs["template"]))
        return "fine\n\nHuman: and then?"

    monkeypatch.setattr(chat, "stream_reply", recording_stream)
    monkeypatch.setattr("builtins.input", typed("What should I pack for a day at the sea?"))
    assert chat.chat_loop(str(runs["verbatim"]), max_new_tokens=4) == 0
    assert sent == [(as_transcript([{"role": "user", "content": "What should I pack for a day at the sea?"}]), False)]
    assert as_transcript([{"role": "user", "content": "What should I pack for a day at the sea?"}]) == HH
    assert "hh-rlhf transcript" in capsys.readouterr().out
    sent.clear()
    monkeypatch.setattr("builtins.input", typed("Hi"))
    assert chat.chat_loop(str(runs["chat"]), max_new_tokens=4) == 0
    assert sent == [([{"role": "user", "content": "Hi"}], True)]


def test_eval_scores_pairs_the_way_the_run_trained(runs, pairs_file, tmp_path):  # noqa: F811
    """eval on a run uses the run's setting: the verbatim run's default equals --no-chat-template, the templated
    run's default differs from it (so the setting is read, not ignored)."""
    def chosen_logps(name, *flags):
        out = tmp_path / f"{name}{len(flags)}"
        assert main(["eval", "--model", str(runs[name]), "--data", str(pairs_file), "--output", str(out),
                     "--max-length", "128", "--max-prompt-length", "64", *flags]) == 0
        return [json.loads(line)["chosen_logps"] for line in (out / "pairs.jsonl").read_text().splitlines()]

    assert chosen_logps("verbatim") == chosen_logps("verbatim", "--no-chat-template")
    assert chosen_logps("chat") != chosen_logps("chat", "--no-chat-template")
