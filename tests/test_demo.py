"""The README demo end to end, with a short training budget."""

from lf_ext.demo import run_demo


def test_demo_trains_and_reports(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", steps=4, eval_limit=6) == 0
    report = capsys.readouterr().out
    assert "test exact match:" in report and "on 6 questions" in report
    assert "loss" in report and "majority-answer baseline" in report
    assert (tmp_path / "demo" / "stock_sft" / "model.safetensors").exists()
