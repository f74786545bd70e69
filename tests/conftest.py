import os
import sys
from pathlib import Path

import pytest

import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["DPOKIT_CACHE"] = tempfile.mkdtemp(prefix="dpokit-test-cache-")  # tests never touch ~/.cache
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import make_model_dir, make_tokenizer  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--measured", action="store_true",
                     help="also run the tests that compare against this machine's own measurements (peak RSS)")


def pytest_collection_modifyitems(config, items):
    """Machine-dependent measurements are a tier of their own: skipped unless --measured, with the reason shown."""
    if config.getoption("--measured"):
        return
    skip = pytest.mark.skip(reason="machine-dependent measurement: run with --measured")
    for item in items:
        if "measured" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny-model"))
