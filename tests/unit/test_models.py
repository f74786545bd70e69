"""models.py: where a model argument points, and which tokenizer an adapter folder uses."""
import json

from dpokit.models import has_tokenizer, load_tokenizer, model_folder


def test_a_run_folder_means_its_final_model(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    assert model_folder(tmp_path / "run") == tmp_path / "run" / "final"
    (tmp_path / "model" / "final").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    assert model_folder(tmp_path / "model") == tmp_path / "model"  # a model folder is itself, whatever it holds
    assert model_folder(tmp_path / "x.gguf") == tmp_path / "x.gguf"


def test_an_adapter_without_tokenizer_config_uses_its_base_tokenizer(tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    (adapter / "tokenizer.json").write_text("not a tokenizer")  # without tokenizer_config.json it is not read
    assert not has_tokenizer(adapter) and has_tokenizer(tiny_model_dir)
    assert load_tokenizer(adapter).get_vocab() == load_tokenizer(tiny_model_dir).get_vocab()
