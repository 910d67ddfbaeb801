"""Readers outside the main paths go through the same error boundary: a damaged eval predictions file on resume,
a run record that is not one (lntune analyze), a DeepSpeed JSON that is not UTF-8, a damaged adapter (checked before
the base model's weights are read)."""

import pytest

from lntune.errors import LntuneError


def test_non_utf8_predictions_on_resume_name_the_file(tmp_path):
    from lntune.eval.runner import read_predictions

    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"id": "a", "prediction": "caf\xe9", "reference": {}}\n')
    before = path.read_bytes()
    with pytest.raises(LntuneError, match=r"predictions.jsonl:1: not UTF-8.*delete it"):
        read_predictions(path)
    assert path.read_bytes() == before


def test_run_record_without_model_is_named(tmp_path):
    from lntune.analysis.commands import run_model

    (tmp_path / "config.yaml").write_text("out: somewhere\n")
    with pytest.raises(LntuneError, match="config.yaml: not an lntune run record"):
        run_model(tmp_path)
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(LntuneError, match="config.yaml"):
        run_model(tmp_path)


def test_deepspeed_config_not_utf8_is_named(tmp_path):
    from lntune.train.zero import read_user_config

    path = tmp_path / "ds.json"
    path.write_bytes(b'{"zero_optimization": {"offload_optimizer": "\xff"}}')
    with pytest.raises(LntuneError, match="ds.json:1: not UTF-8"):
        read_user_config(str(path))
    with pytest.raises(LntuneError, match="missing.json"):
        read_user_config(str(tmp_path / "missing.json"))


def test_damaged_adapter_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import lntune.model.load as load_module
    from lntune.adapter import load_with_adapter

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter.json").write_text("{not json")
    monkeypatch.setattr(load_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    with pytest.raises(LntuneError, match="adapter.json"):
        load_with_adapter(tmp_path / "model", tmp_path / "adapter")
