"""`lntune demo` (what `make demo` runs) completes and prints what it promises."""

from lntune.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "16 image tokens after expansion" in out
    assert "LLaMA-2-7B + CLIP ViT-L/14" in out
    assert "266,608,640" in out and "3.78%" in out  # the paper's LayerNorm figure at 7B
    assert (tmp_path / "demo" / "model" / "model.safetensors").is_file()
