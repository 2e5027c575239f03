"""LlamaBoard end to end in headless Chromium, as a newcomer uses it: ``lf-ext webui`` (no venv on PATH, no
compute-type change), train a tiny bgobj model on the shipped ``data/`` from the Train tab, then chat with it
in the Chat tab about an uploaded image and see the second question hit the background cache.

Needs the ``playwright`` package (dev extra) and Debian's ``chromium`` (``scripts/setup_browser.sh``; Playwright's
own browser download is not used). Screenshots go to ``LF_EXT_BOARD_SCREENSHOTS`` (``docs/`` for the README)
or the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, wait_for_http

pytestmark = pytest.mark.integration
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
QUESTIONS = ("What color is the object? Answer with one word or number.",
             "What shape is the object? Answer with one word or number.")  # fmt: skip
UPLOAD = REPO_ROOT / "data" / "images" / "test" / "room_000_001.png"


def _chromium() -> str:
    for candidate in (os.environ.get("LF_EXT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Debian's chromium is not installed (bash scripts/setup_browser.sh installs it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def board(tmp_path):
    """``lf-ext webui`` on 127.0.0.1 in a fresh folder holding ``data/``, with the venv's bin *not* on PATH."""
    cwd = tmp_path / "board"
    cwd.mkdir()
    (cwd / "data").symlink_to(REPO_ROOT / "data")
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("LF_EXT_WEBUI", "LF_EXT_DISABLE")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    env.update(HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1", GRADIO_ANALYTICS_ENABLED="False")
    script = Path(bin_dir) / "lf-ext"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "lf_ext.cli"]
    port = _free_port()
    log = cwd / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command + ["webui", "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", proc, timeout=240)
        yield f"http://127.0.0.1:{port}/", cwd, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the board and any child it started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra) is not installed")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium_profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})  # fmt: skip
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)
            yield page
        finally:
            context.close()


# ---------------------------------------------------------------------------------------------- page helpers
def field(page, label: str):
    """The form field whose label starts with ``label`` (LlamaBoard's labels end with their help text)."""
    return page.get_by_label(re.compile(r"^\s*" + re.escape(label) + r"(\s|$)")).filter(visible=True).first


def pick(page, label: str, value: str) -> None:
    """Choose ``value`` in a gradio dropdown (typing filters the options)."""
    box = field(page, label)
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=True).first.click()


def fill(page, label: str, value: str) -> None:
    box = field(page, label)
    box.fill(value)
    box.press("Tab")  # gradio sends a textbox's value on blur


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(f"number input for {label}").filter(visible=True).first
    box.fill(str(value))
    box.press("Enter")


def bot_messages(page) -> list[str]:
    return page.locator("[data-testid=bot]").all_inner_texts()


def wait_for_answer(page, count: int, timeout: float = 180) -> str:
    """Poll until the chat shows ``count`` answers and the last one stopped changing."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        answers = bot_messages(page)
        if len(answers) >= count and answers[count - 1].strip():
            if answers[count - 1] == last:
                return last
            last = answers[count - 1]
        page.wait_for_timeout(1000)
    pytest.fail(f"no stable answer {count} within {timeout} s (answers: {bot_messages(page)})")


def wait_for_log(log: Path, pattern: str, count: int = 1, timeout: float = 120) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.findall(pattern, log.read_text(errors="replace"))
        if len(found) >= count:
            return found
        time.sleep(1)
    pytest.fail(f"{count} x {pattern!r} not in the server log within {timeout} s:\n{log.read_text()[-3000:]}")


def screenshot(page, path: Path, below: str | None = None) -> None:
    """A full-page PNG without notification toasts; with ``below``, cut 450 px under that field."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    for close in page.locator(".toast-close").all():
        try:
            if close.is_visible():
                close.click(timeout=5000)
        except PlaywrightError:
            pass  # the toast closed itself between the check and the click; the count below still decides
    expect(page.locator(".toast-close")).to_have_count(0)
    clip = None
    if below:
        top = field(page, below).bounding_box()["y"] + page.evaluate("() => window.scrollY")  # page coordinates
        clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": top + 450}
    page.screenshot(path=str(path), full_page=True, clip=clip)


def screenshots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LF_EXT_BOARD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------- the walk-through
def test_train_and_chat_in_llamaboard(board, page, tiny_dir, tmp_path):
    from playwright.sync_api import expect

    url, cwd, log = board
    shots = screenshots_dir(tmp_path)
    tiny = tiny_dir("qwen2_vl")
    page.goto(url)

    # Train tab: a Qwen2-VL entry (so the board treats it as multimodal), our tiny checkpoint, the bgobj template
    pick(page, "Model name", "Qwen2-VL-2B-Instruct")
    expect(field(page, "Chat template")).to_have_value("qwen2_vl")  # the board filled in path and template
    fill(page, "Model path", str(tiny))
    pick(page, "Chat template", "qwen2_vl_bgobj")
    expect(field(page, "Data dir")).to_have_value("data")  # the shipped data/, LlamaBoard's default
    pick(page, "Dataset", "scenes_train")
    expect(field(page, "Compute type")).to_have_value("fp32")  # lf-ext webui on CPU; stock says bf16
    page.get_by_text("Extra configurations").click()
    extra = {"optim": "adamw_torch", "max_steps": 3, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
             "bgobj_mask_provider": "dataset", "bgobj_sibling_prob": 0.5}  # fmt: skip
    fill(page, "Extra arguments", json.dumps(extra))
    set_number(page, "Gradient accumulation", 1)
    set_number(page, "Logging steps", 1)
    page.get_by_role("button", name="Preview command").click()
    preview = page.get_by_text("--bgobj_mask_provider")
    preview.wait_for()
    command = page.locator("code").filter(has_text="llamafactory-cli train").first.inner_text()
    assert "--template qwen2_vl_bgobj" in command and "--bgobj_sibling_prob 0.5" in command, command
    assert "--bf16 True" not in command, command
    output_name = field(page, "Output dir").input_value()
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text("Finished.").first.wait_for(timeout=420_000)
    output_dir = cwd / "saves" / "Qwen2-VL-2B-Instruct" / "lora" / output_name
    steps = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    assert steps[-1]["current_steps"] == steps[-1]["total_steps"] == 3
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert "[BG_START]" in log.read_text()  # the training child printed an example in the bgobj layout
    screenshot(page, shots / "board_train.png", below="Output dir")

    # Chat tab: the trained adapter, an upload (no dataset mask: the documented entropy fallback), two questions
    pick(page, "Checkpoint path", output_name)
    page.get_by_role("tab", name="Chat").click()
    fill(page, "Extra arguments", json.dumps({"bgobj_mask_provider": "dataset"}))
    page.get_by_role("button", name="Load model", exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('Model loaded'))",
                           timeout=240_000)  # fmt: skip
    set_number(page, "Maximum new tokens", 8)
    page.locator("input[type=file]").first.set_input_files(str(UPLOAD))
    for number, question in enumerate(QUESTIONS, start=1):
        page.get_by_placeholder("Input...").fill(question)
        page.get_by_role("button", name="Submit", exact=True).click()
        wait_for_log(log, r"background cache (?:hit|miss|rejection)", count=number)
        assert wait_for_answer(page, number).strip()
    assert len(bot_messages(page)) == len(QUESTIONS), bot_messages(page)
    outcomes = wait_for_log(log, r"background cache (hit|miss|rejection)", count=2)
    assert outcomes[:2] == ["miss", "hit"], outcomes  # the second question reuses the image's background
    assert "no 'dataset' mask for <in-memory image" in log.read_text() and "using 'entropy'" in log.read_text()
    screenshot(page, shots / "board_chat.png")
