import os

import pytest

from layerfreeze.base.models import tiny_model
from layerfreeze.base.runtime import apply_thread_policy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as `make test` sets it; kernels inherit it
apply_thread_policy()  # this process's torch threads, and the whole policy for the kernels and commands it starts

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
