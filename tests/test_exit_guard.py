"""A process may exit while LLaMA-Factory's generation thread is still decoding (piped ``chat``)."""

import subprocess
import sys
import textwrap

import pytest

from conftest import cli_env

pytestmark = pytest.mark.integration  # runs llamafactory-cli / trains in child processes

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading
    from transformers.generation.streamers import BaseStreamer

    steps, started = [], threading.Event()

    class Counting(BaseStreamer):
        def put(self, value):
            steps.append(1)
            if len(steps) > 2:
                started.set()

        def end(self):
            pass

    thread = None

    def report():  # registered first, so it runs after lf_ext's exit hook
        print(f"alive={thread.is_alive()} steps={len(steps)}", flush=True)

    atexit.register(report)

    from llamafactory.chat import ChatModel

    engine = ChatModel(dict(model_name_or_path=sys.argv[1], template="qwen2_vl", infer_dtype="float32")).engine
    ids = engine.tokenizer("hello there", return_tensors="pt").input_ids
    kwargs = dict(inputs=ids, max_new_tokens=50000, min_new_tokens=50000, do_sample=False, streamer=Counting())
    thread = threading.Thread(target=engine.model.generate, kwargs=kwargs, daemon=True)  # as hf_engine does
    thread.start()
    started.wait(120)
    print("main returns", flush=True)
    """
)


def test_exit_during_generation_stops_and_joins_the_thread(tmp_path, tiny_dir):
    script = tmp_path / "exit_mid_generation.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tiny_dir("qwen2_vl"))], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    report = proc.stdout.strip().splitlines()[-1]
    assert report.startswith("alive=False"), proc.stdout
    assert int(report.split("steps=")[1]) < 50000  # stopped by the exit, not by the budget
