"""The README demo end to end (stock vs bgobj stages, export, answers), with a short budget."""

import json

import pytest

from lf_ext.demo import run_demo

pytestmark = pytest.mark.integration  # runs llamafactory-cli / trains in child processes


def test_demo_trains_and_reports(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", steps=6, eval_limit=6, masks="dataset") == 0
    report = capsys.readouterr().out
    assert "question type" in report and "majority-answer baseline" in report
    result = json.loads((tmp_path / "demo" / "demo_result.json").read_text())
    assert result["stock"]["n"] == result["bgobj"]["n"] == 6
    assert 0 <= result["bgobj"]["accuracy"] <= 1
    config = json.loads((tmp_path / "demo" / "merged" / "config.json").read_text())
    assert config["vision_config"]["bgobj"]["prefusion_layers"] == 1  # the exported model kept its bgobj modules
