"""`dpokit.train` takes the path `dpokit dpo` takes: the same weights and the same metrics.jsonl, with the cached
reference (the default) and after --resume; fields a model object cannot honour are refused."""
import json
import shutil

import pytest
from safetensors.torch import load_file

from dpokit import DPOConfig, train
from dpokit.cli import main
from dpokit.errors import UserError
from dpokit.models import load_model, load_tokenizer

TIMING = {"tokens_per_s"}  # wall-clock figures: the only fields allowed to differ


@pytest.fixture(scope="module")
def rows():
    return [{"prompt": f"Question {i}: is it safe?", "chosen": f" Yes, {i} is fine.", "rejected": f" Never {i}!"}
            for i in range(16)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("api") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SETTINGS = dict(max_steps=4, batch_size=4, learning_rate=1e-3, eval_fraction=0.25, save_every=2, max_length=64,
                max_prompt_length=32)


def cli_run(model_dir, data, out):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    assert main(["dpo", "--model", str(model_dir), "--data", str(data), "--output", str(out), *flags]) == 0
    return out


def metrics(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def weights(run_dir):
    return load_file(run_dir / "final" / "model.safetensors")


def assert_same_run(a, b):
    assert metrics(a) == metrics(b) and len(metrics(a)) == 5  # step 0 (held-out) and 4 steps
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_api_with_objects_equals_cli_and_resumes_equal(tiny_model_dir, data, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    cli = cli_run(tiny_model_dir, data, tmp_path / "cli")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert max(float((weights(cli)[k] - start[k]).abs().max()) for k in start) > 1e-3  # it trained

    # A model object, its tokenizer and rows in memory: the run reads them back from OUTPUT/data/.
    run = train(load_model(tiny_model_dir), None, DPOConfig(output=str(tmp_path / "api"), **SETTINGS), rows,
                load_tokenizer(tiny_model_dir))
    api = tmp_path / "api"
    assert_same_run(cli, api)
    assert run.summary["reference"].endswith(".safetensors")  # the cached reference, as the CLI's default
    # keyed by the object's weights (a folder's key is its files' digests): this run filled its own cache
    assert run.summary["reference_rows_computed"] == 16
    assert (api / "config.yaml").is_file() and (api / "report.html").is_file() and (api / "checkpoint-2").is_dir()
    assert "data/train.jsonl" in (api / "config.yaml").read_text()
    assert float((run.model.state_dict()["model.norm.weight"] - weights(api)["model.norm.weight"]).abs().max()) == 0

    # --resume through the API, from the CLI run's checkpoint-2, with a model object: steps 3-4 redone equal.
    resumed = tmp_path / "resumed"
    shutil.copytree(cli, resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "summary.json").unlink()
    again = train(load_model(tiny_model_dir), None, DPOConfig(output=str(resumed), resume=True, **SETTINGS), data,
                  load_tokenizer(tiny_model_dir))
    assert_same_run(cli, resumed)
    assert again.summary["resumed_from"] == 2
    assert again.summary["reference_rows_computed"] == 0  # the same weights and data as the API run: its cache


def test_api_from_paths_equals_cli(tiny_model_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    cli = cli_run(tiny_model_dir, data, tmp_path / "cli")
    seen = []

    class Steps:
        def on_step(self, record):
            seen.append(record["step"])

    train(None, None, DPOConfig(model=str(tiny_model_dir), data=str(data), output=str(tmp_path / "api"), **SETTINGS),
          callbacks=[Steps()])
    assert_same_run(cli, tmp_path / "api")
    assert seen == [1, 2, 3, 4]


@pytest.mark.parametrize("field,value,match", [
    ("model", "some/folder", "a model object was given"),
    ("dtype", "bfloat16", "holds torch.float32"),
    ("attention", "eager", "ignored"),
    ("load_in_4bit", True, "ignored"),
])
def test_a_field_a_model_object_cannot_honour_is_refused(tiny_model_dir, data, tmp_path, field, value, match):
    config = DPOConfig(output=str(tmp_path / "x"), data=str(data), **{field: value, **({"lora_r": 4} if field ==
                                                                                          "load_in_4bit" else {})})
    with pytest.raises(UserError, match=match):
        train(load_model(tiny_model_dir), None, config, tokenizer=load_tokenizer(tiny_model_dir))
    assert not (tmp_path / "x").exists()
