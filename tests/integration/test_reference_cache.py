"""Cached reference log-probs equal live ones, are reused, and a foreign cache is refused."""
import json

import pytest
import torch

from dpokit.cli import main
from dpokit.data.collate import collate_shared
from dpokit.errors import UserError
from dpokit.reference import LiveReference, empty_tables, fill_rows, load_cache, missing_rows, save_cache
from dpokit.types import TokenizedPair
from tiny import make_model


def pairs(n=6):
    g = torch.Generator().manual_seed(3)
    ids = lambda k: tuple(torch.randint(1, 60, (k,), generator=g).tolist())  # noqa: E731
    return [TokenizedPair(ids(3 + i), ids(2 + i % 3), ids(4 - i % 2), f"p{i}") for i in range(n)]


def test_cached_equals_live_and_foreign_cache_is_refused(tmp_path):
    model = make_model(vocab_size=60).eval()
    splits = {"train": pairs(), "eval": pairs(2)}
    tables = empty_tables(splits)
    needed = {"train": [1, 4, 5], "eval": [0, 1]}
    fill_rows(model, tables, splits, missing_rows(tables, needed), collate_shared, 0, batch_pairs=2, lean=True,
              device="cpu")
    assert missing_rows(tables, needed) == {"train": [], "eval": []}
    assert torch.isnan(tables["train"][0]).all()  # rows no step uses are never computed
    path = tmp_path / "ref.safetensors"
    save_cache(path, "key-a", tables, tmp_path)
    cached = load_cache(path, "key-a", splits)
    live = LiveReference(model)
    idx = [4, 1, 5]
    batch = collate_shared([splits["train"][i] for i in idx], 0)
    a, b = cached.logps(batch, "train", idx), live.logps(batch, "train", idx)
    assert torch.allclose(a.chosen, b.chosen, atol=1e-5) and torch.allclose(a.rejected, b.rejected, atol=1e-5)
    assert torch.equal(a.chosen_tokens, b.chosen_tokens)
    with pytest.raises(UserError, match="other weights or data"):
        load_cache(path, "key-b", splits)
    with pytest.raises(UserError, match="expected"):
        load_cache(path, "key-a", {"train": pairs(5), "eval": pairs(2)})


def run(model_dir, data, out, *extra):
    return main(["dpo", "--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--learning-rate", "1e-3", "--eval-fraction", "0.25", *extra])


def test_cached_run_equals_live_run_and_second_run_reuses_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    rows = [{"prompt": f"Q{i}: is it safe?", "chosen": f" Yes, {i} is fine.", "rejected": f" Never {i}."}
            for i in range(16)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run(tiny_model_dir, data, tmp_path / "live", "--reference-cache", "off") == 0
    assert run(tiny_model_dir, data, tmp_path / "cached") == 0
    caches = list((tmp_path / "cache" / "reference").glob("*.safetensors"))
    assert len(caches) == 1
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    live, cached = read(tmp_path / "live"), read(tmp_path / "cached")
    assert [m["step"] for m in live] == [m["step"] for m in cached] and len(live) > 2
    for a, b in zip(live, cached, strict=True):
        for key in ("loss", "eval/loss", "rewards/margins"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)
    # The first cached run computed every row it reached; a second one computes none (the summary counts them).
    first = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert first["reference_rows_computed"] == first["pairs"]["train"] + first["pairs"]["eval"] > 0
    assert run(tiny_model_dir, data, tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["reference"] == str(caches[0]) and again["reference_rows_computed"] == 0
