"""``lf-ext yolo-train`` uses ``train_yolo``'s own (tuned) defaults unless told otherwise; nothing trains here."""

from __future__ import annotations

import inspect

import pytest

from conftest import REPO_ROOT


@pytest.fixture
def captured(monkeypatch):
    """Replace train_yolo by a recorder: the CLI's call is captured instead of training."""
    import lf_ext.masks.yolo_train as yolo_train

    calls: list[dict] = []

    def record(scenes_dir, out_dir, **kwargs):
        calls.append(dict(kwargs, scenes_dir=str(scenes_dir), out_dir=str(out_dir)))
        return out_dir

    signature = inspect.signature(yolo_train.train_yolo)
    monkeypatch.setattr(yolo_train, "train_yolo", record)
    return signature, calls


def test_cli_defaults_equal_the_library_defaults(captured, tmp_path):
    from lf_ext.cli import build_parser, main

    signature, calls = captured
    library = {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    args = build_parser().parse_args(["yolo-train", "--scenes", "s", "--out", "o"])
    options = {k: v for k, v in vars(args).items() if k not in ("command", "scenes", "out", "func")}
    assert options and all(options[k] == library[k] for k in options), (options, library)
    assert library["imgsz"] == 256 and library["epochs"] is None  # None: default_epochs (150 on the default scenes)

    assert main(["yolo-train", "--scenes", str(REPO_ROOT / "data"), "--out", str(tmp_path / "yolo")]) == 0
    (call,) = calls
    passed = {k: v for k, v in call.items() if k not in ("scenes_dir", "out_dir")}
    assert passed == {k: library[k] for k in passed}


def test_cli_overrides_reach_the_library(captured, tmp_path):
    from lf_ext.cli import main

    _, calls = captured
    main(["yolo-train", "--scenes", str(REPO_ROOT / "data"), "--out", str(tmp_path), "--epochs", "3", "--imgsz", "320"])
    assert calls[0]["epochs"] == 3 and calls[0]["imgsz"] == 320


def test_default_epochs_make_150_on_the_default_scenes():
    from lf_ext.masks.yolo_train import default_epochs

    assert default_epochs(72) == 150  # 12 backgrounds x 8 images, 3/4 of them train
