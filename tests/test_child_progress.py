"""Progress bars for child ``llamafactory-cli train`` runs (lf_ext.progress), with a fake child that writes
LLaMA-Factory's ``trainer_log.jsonl`` lines, and the log path printed when a child fails."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
import time

import pytest

FAKE_CLI = textwrap.dedent("""
    # a stand-in for `llamafactory-cli train RECIPE key=value...`: writes trainer_log.jsonl lines, prints, exits
    import json, os, sys, time
    overrides = dict(a.split("=", 1) for a in sys.argv[3:])
    out = overrides["output_dir"]
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "trainer_log.jsonl")
    if os.path.exists(log):
        os.remove(log)  # as LLaMA-Factory does with overwrite_output_dir
    total = int(overrides.get("max_steps", 3))
    for step in range(1, total + 1):
        time.sleep(0.2)
        row = {"current_steps": step, "total_steps": total, "loss": 2.0 / step, "remaining_time": f"0:00:0{total - step}"}
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\\n")
        print("step", step, flush=True)
    sys.exit(int(overrides.get("exit_code", 0)))
""")


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    import lf_ext.adaptation as adaptation

    script = tmp_path / "fake_llamafactory_cli.py"
    script.write_text(FAKE_CLI)
    monkeypatch.setattr(adaptation, "CLI", [sys.executable, str(script)])
    return adaptation


def test_train_child_shows_steps_loss_and_eta(fake_cli, tmp_path, capsys):
    out = tmp_path / "stage1"
    fake_cli.run_llamafactory("train", "recipe.yaml", {"output_dir": out, "max_steps": 3}, tmp_path / "stage1.log",
                              desc="stage1")  # fmt: skip
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("stage1:") and "3/3" in final and "100%" in final, err
    assert "loss=0.6667" in final and "eta=0:00:00" in final, final
    assert (tmp_path / "stage1.log").read_text().count("step") == 3


def test_an_earlier_runs_log_is_not_shown(fake_cli, tmp_path, capsys):
    out = tmp_path / "stage2"
    out.mkdir()
    stale = out / "trainer_log.jsonl"
    stale.write_text(json.dumps({"current_steps": 90, "total_steps": 99, "loss": 9.0}) + "\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fake_cli.run_llamafactory("train", "recipe.yaml", {"output_dir": out, "max_steps": 2}, tmp_path / "s2.log", desc="s2")
    err = capsys.readouterr().err
    assert "/99" not in err and "loss=9" not in err
    assert "2/2" in err


def test_a_failing_child_prints_its_log_path(fake_cli, tmp_path, capsys):
    log = tmp_path / "bad.log"
    with pytest.raises(RuntimeError, match="exit 3") as error:
        fake_cli.run_llamafactory("train", "recipe.yaml", {"output_dir": tmp_path / "bad", "max_steps": 1, "exit_code": 3},
                                  log)  # fmt: skip
    assert f"full log: {log}" in capsys.readouterr().err
    assert str(log) in str(error.value) and "step 1" in str(error.value)  # the tail of the log


def test_follower_reads_only_complete_lines(tmp_path):
    from lf_ext.progress import TrainerLogFollower

    path = tmp_path / "trainer_log.jsonl"
    stream = io.StringIO()
    follower = TrainerLogFollower(path, "x", since=time.time() - 5, stream=stream)
    assert follower.poll() == {}
    path.write_text(json.dumps({"current_steps": 1, "total_steps": 4, "loss": 1.5}) + "\n" + '{"current_st')
    assert follower.poll()["current_steps"] == 1 and follower.bar.n == 1 and follower.bar.total == 4
    with path.open("a") as handle:
        handle.write('eps": 2, "total_steps": 4, "loss": 1.25}\n')
    assert follower.poll()["loss"] == 1.25 and follower.bar.n == 2
    follower.close()
    assert "2/4" in stream.getvalue()


def test_adapt_shows_a_bar_per_stage(fake_cli, tmp_path, capsys):
    from lf_ext.adaptation import train_stage

    train_stage(tmp_path, "base", "stock_sft.yaml", 2)
    err = capsys.readouterr().err
    assert "base:" in err and "2/2" in err
