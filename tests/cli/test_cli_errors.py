"""Errors a user can cause: one clear line, non-zero exit, no traceback (unless --debug), no network."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lntune.cli import main


def run_main(capsys, *argv):
    """main's exit code and what main itself wrote to stderr (not what fixtures printed while making its inputs)."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def _build_args(llm, vision, out, *extra):
    return ["build", "--llm", str(llm), "--vision", str(vision), "--out", str(out), *extra]


def test_missing_path(capsys, backbone_dir, tmp_path):
    code, err = run_main(capsys, *_build_args(tmp_path / "nope", backbone_dir("vision", "clip"), tmp_path / "m"))
    assert code == 1
    assert err.count("\n") == 0 and "LLM path does not exist" in err and "nope" in err


def test_directory_is_not_a_causal_lm(capsys, backbone_dir, tmp_path):
    vision = backbone_dir("vision", "clip")
    code, err = run_main(capsys, *_build_args(vision, vision, tmp_path / "m"))
    assert code == 1 and "vision model" in err and "causal language model" in err


def test_directory_is_not_a_vision_model(capsys, backbone_dir, tmp_path):
    llm = backbone_dir("llm", "llama")
    code, err = run_main(capsys, *_build_args(llm, llm, tmp_path / "m"))
    assert code == 1 and "not a supported vision encoder" in err and "clip" in err


def test_directory_without_config(capsys, backbone_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_main(capsys, *_build_args(tmp_path / "empty", backbone_dir("vision", "clip"), tmp_path / "m"))
    assert code == 1 and "no config.json" in err


def test_invalid_config_json_names_the_line(capsys, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    code, err = run_main(capsys, "params", "--llm", str(tmp_path / "bad"), "--vision", str(tmp_path / "bad"))
    assert code == 1 and "config.json:3:" in err and "invalid JSON" in err


def test_remote_code_refused_without_flag(capsys, backbone_dir, tmp_path):
    llm = tmp_path / "remote"
    shutil.copytree(backbone_dir("llm", "llama"), llm)
    config = json.loads((llm / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (llm / "config.json").write_text(json.dumps(config))
    code, err = run_main(capsys, *_build_args(llm, backbone_dir("vision", "clip"), tmp_path / "m"))
    assert code == 1 and "--trust-remote-code" in err


def test_unknown_connector(capsys, backbone_dir, tmp_path):
    code, err = run_main(capsys, *_build_args(backbone_dir("llm", "llama"), backbone_dir("vision", "clip"),
                                              tmp_path / "m", "--connector", "qformer"))
    assert code == 1 and "unknown connector 'qformer'" in err and "linear" in err and "mlp2x_gelu" in err


def test_unknown_method(capsys, built_model):
    code, err = run_main(capsys, "params", "--model", str(built_model()), "--method", "prefix-tuning")
    assert code == 1 and "unknown method 'prefix-tuning'" in err and "layernorm-simple" in err


def test_model_that_is_not_llava(capsys, backbone_dir):
    code, err = run_main(capsys, "params", "--model", str(backbone_dir("llm", "llama")))
    assert code == 1 and "not a Llava MLLM" in err and "lntune build" in err


def test_debug_shows_the_traceback(backbone_dir, tmp_path):
    from lntune.errors import LntuneError

    with pytest.raises(LntuneError):
        main(["--debug", *_build_args(tmp_path / "nope", backbone_dir("vision", "clip"), tmp_path / "m")])


def test_console_script_offline_hub_id(tmp_path):
    """The real entry point, with a hub id instead of a path: one line, exit 1, nothing fetched."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "lntune", "build", "--llm", "meta-llama/Llama-2-7b-hf", "--vision",
         "openai/clip-vit-large-patch14", "--out", str(tmp_path / "m")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "never downloads" in result.stderr
    assert not (tmp_path / "m").exists()
