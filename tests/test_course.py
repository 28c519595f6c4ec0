import json

import pytest
import torch

from layerfreeze import resolve_profile, save_metrics
from layerfreeze.course import PROFILES


def test_auto_profile_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_profile("auto") == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_profile("auto") == "cpu"
    assert [resolve_profile(p) for p in ("smoke", "cpu", "full")] == ["smoke", "cpu", "full"]
    with pytest.raises(ValueError, match="auto, smoke, cpu, full"):
        resolve_profile("fast")


def test_save_metrics_writes_clean_json(tmp_path):
    path = save_metrics({"accuracy": torch.tensor(0.5), "nan": float("nan"), "rows": [(1, 2.0)]}, tmp_path, "01_x")
    assert path == tmp_path / "01_x.json"
    payload = json.loads(path.read_text())
    assert payload["accuracy"] == 0.5 and payload["nan"] is None and payload["rows"] == [[1, 2.0]]
    assert payload["notebook"] == "01_x" and "torch" in payload["environment"]
