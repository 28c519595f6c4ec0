import os

import pytest
import torch

from layerfreeze import tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as `make test` sets it; kernels inherit it
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FAMILIES = ["bert", "distilbert", "roberta", "gpt2", "llama"]


@pytest.fixture(params=FAMILIES)
def family_model(request):
    """A tiny random classification model of each common family."""
    return request.param, tiny_model(request.param, num_layers=3)


@pytest.fixture
def bert():
    return tiny_model("bert", num_layers=4)


@pytest.fixture(scope="session")
def minilm():
    """The real default model and tokenizer (offline, from the pinned package)."""
    from layerfreeze import load_model
    return load_model("minilm", num_labels=2)
