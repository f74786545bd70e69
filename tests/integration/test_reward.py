"""`dpokit reward` end to end on a tiny random model, in process through dpokit.cli.main: a separable set learned
to held-out accuracy 1.0 and used as an hf: judge, resume, and the reward read identically by training and the judge."""
import json
import shutil

import pytest
import torch

from dpokit.cli import main
from dpokit.judges import Sample, load_judge

TOPICS = ["the weather", "a recipe", "my dog", "the train", "a book", "the garden", "a song", "the sea",
          "a bicycle", "the moon", "my neighbour", "a puzzle"]
UNSEEN = ["a volcano", "the library", "an old map", "a teapot"]


def separable(topic: str, i: int) -> dict:
    """Chosen and rejected differ in one word, and chosen always has it: 'kind' against 'rude'."""
    return {"prompt": f"\n\nHuman: Tell me something about {topic}, please ({i}).\n\nAssistant:",
            "chosen": f" Here is a kind answer about {topic}.", "rejected": f" Here is a rude answer about {topic}."}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "separable.jsonl"
    rows = [separable(TOPICS[i % len(TOPICS)], i) for i in range(64)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reward_args(model_dir, data, output, *extra):
    return ["reward", "--model", str(model_dir), "--data", str(data), "--output", str(output), "--batch-size", "8",
            "--learning-rate", "1e-3", "--eval-fraction", "0.25", "--max-length", "96", "--max-prompt-length", "48",
            *map(str, extra)]


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_separable_set_reaches_held_out_accuracy_1_and_ranks_unseen_pairs_as_a_judge(tiny_model_dir, pairs_file,
                                                                                       tmp_path, capsys):
    run = tmp_path / "run"
    assert main(reward_args(tiny_model_dir, pairs_file, run, "--max-steps", 30, "--eval-every", 10)) == 0
    out = capsys.readouterr().out
    assert f"judge with: --judge hf:{run / 'final'}" in out and "pair accuracy" in out
    evals = [m for m in read_metrics(run) if "eval/loss" in m]
    assert [m["step"] for m in evals] == [0, 10, 20, 30]
    assert evals[0]["eval/loss"] == pytest.approx(0.6931, abs=0.05)  # a new head scores every answer near 0
    end = evals[-1]
    assert end["eval/rewards/accuracies"] == 1.0 and end["eval/pairs"] == 16
    assert end["eval/rewards/accuracies_ci"][0] > 0.5 and end["eval/loss"] < 0.3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["command"] == "reward" and summary["eval_end"]["eval/rewards/accuracies"] == 1.0
    assert "better than chance" in summary["verdict"]
    from dpokit.report import REWARD_MODEL_PANELS, choose_panels, read_metrics as report_metrics

    assert choose_panels(report_metrics(run)) == REWARD_MODEL_PANELS and (run / "report.png").is_file()

    judge = load_judge(f"hf:{run / 'final'}")
    unseen = [separable(topic, 100 + i) for i, topic in enumerate(UNSEEN)]
    scores = judge([Sample(r["prompt"], r[key], (), ()) for r in unseen for key in ("chosen", "rejected")])
    assert all(chosen > rejected for chosen, rejected in zip(scores[::2], scores[1::2])), scores


@pytest.mark.parametrize("lora", [False, True])
def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(tiny_model_dir, pairs_file, tmp_path, lora):
    common = ["--max-steps", 6, *(["--lora-r", 4] if lora else [])]
    straight, interrupted = tmp_path / "a", tmp_path / "b"
    assert main(reward_args(tiny_model_dir, pairs_file, straight, *common)) == 0
    assert main(reward_args(tiny_model_dir, pairs_file, interrupted, *common, "--save-every", 3)) == 0
    shutil.rmtree(interrupted / "final")  # as if it died after its step-3 checkpoint
    assert main(reward_args(tiny_model_dir, pairs_file, interrupted, *common, "--save-every", 3, "--resume")) == 0
    from safetensors.torch import load_file

    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(interrupted / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "score.weight" in a and not (straight / "final" / "adapter_config.json").exists()  # a plain hf: folder
    steps = [m["step"] for m in read_metrics(interrupted)]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 6


@pytest.fixture(params=["pad differs from eos", "pad is eos"])
def model_dir(request, tiny_model_dir, tmp_path):
    """The tiny model as it is, and with pad = EOS (transformers then pools at the token before a final EOS)."""
    if request.param == "pad differs from eos":
        return tiny_model_dir
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_model_dir, tmp_path / "pad-is-eos")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    return folder


def test_training_and_the_hf_judge_give_the_same_reward_for_the_same_pair(model_dir, pairs_file, tmp_path):
    """The held-out pairs' rewards as training computes them (RewardObjective's batch through its module) equal the
    judge's on (prompt, answer) from final/: plain text, a conversation, and a prompt cut by --max-prompt-length."""
    from dpokit.config import RewardConfig
    from dpokit.data.tokenize import tokenize_pairs
    from dpokit.train.objectives import RewardObjective
    from dpokit.train.reward import run_reward
    from dpokit.types import PreferencePair

    config = RewardConfig(model=str(model_dir), data=str(pairs_file), output=str(tmp_path / "run"), max_steps=4,
                          batch_size=8, learning_rate=1e-3, eval_fraction=0.25, max_length=96, max_prompt_length=48)
    trained = run_reward(config, quiet=True).model.eval()
    judge = load_judge(f"hf:{tmp_path / 'run' / 'final'}", batch_size=3)  # other batches, other padding
    long_prompt = "\n\nHuman: " + "Tell me more about the sea and the moon. " * 12 + "\n\nAssistant:"
    chat = ({"role": "user", "content": "Tell me about a teapot."},)
    pairs = [PreferencePair(**separable(topic, i), origin=f"p{i}") for i, topic in enumerate(UNSEEN)]
    pairs += [PreferencePair(long_prompt, " A kind answer.", " A rude one, and a longer one too.", "long"),
              PreferencePair(chat, "It holds tea.", "No idea.", "chat")]
    tokenizer = judge.tokenizer
    tokenized = tokenize_pairs(tokenizer, pairs, max_length=96, max_prompt_length=48, skip_invalid=False,
                               chat=True)
    assert tokenized.counts["truncated_prompt"] == 1 and len(tokenized.pairs) == len(pairs)

    objective = RewardObjective(config)
    with torch.no_grad():
        chosen, rejected = objective.wrap(trained)(objective.collate(tokenized.pairs, tokenizer.pad_token_id))
    judged = judge([Sample(p.prompt, answer, (), ()) for p in pairs for answer in (p.chosen, p.rejected)])
    assert judged[::2] == pytest.approx(chosen.tolist(), abs=1e-5)
    assert judged[1::2] == pytest.approx(rejected.tolist(), abs=1e-5)
    assert len(set(judged)) == len(judged)  # a trained model, not a constant


def test_help_names_the_reward_settings_and_bad_combinations_are_one_line(capsys, tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["reward", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "Bradley–Terry" in shown and "default 1e-05" in shown and "runs/reward" in shown and "--nproc" in shown
    for flags, named in ((["--full-logits"], "full_logits"), (["--lora-r", "4", "--early-stop", "--eval-every", "2"],
                                                              "early_stop")):
        assert main(["reward", "--model", str(tiny_model_dir), "--output", str(tmp_path / "r"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dpokit: error: config: {named}:") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
