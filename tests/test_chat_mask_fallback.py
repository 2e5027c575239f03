"""``bgobj_mask_fallback: auto`` (the default): training keeps 'none'; chat, api, webchat and LlamaBoard's
chat split an upload the provider has no mask for (an in-memory image) with 'entropy'."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT


def _upload() -> Image.Image:
    """A chat upload: an in-memory image (no path), with a textured corner the entropy provider finds."""
    pixels = np.full((224, 224, 3), 120, np.uint8)
    pixels[:84, :84] = np.random.default_rng(0).integers(0, 255, (84, 84, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _labeler(do_train: bool | None, **keys):
    from lf_ext.config import Settings
    from lf_ext.plugins.image_labels import UnitLabeler

    lf_args = {} if do_train is None else {"do_train": do_train}
    return UnitLabeler(Settings.from_dict(dict(keys, bgobj_mask_provider="dataset", **lf_args)))


def test_default_is_auto():
    from lf_ext.config import parse_bgobj_args

    assert parse_bgobj_args({}).bgobj_mask_fallback == "auto"


@pytest.mark.parametrize(("do_train", "keys", "expected"), [
    (None, {}, "entropy"),  # chat/api/webchat: no do_train
    (False, {}, "entropy"),
    (True, {}, "none"),  # training, as before
    (None, {"bgobj_mask_fallback": "none"}, "none"),  # explicit keys win
    (True, {"bgobj_mask_fallback": "entropy"}, "entropy"),
    (None, {"bgobj_mask_fallback": "error"}, "error"),
])  # fmt: skip
def test_auto_resolves_by_command(do_train, keys, expected):
    assert _labeler(do_train, **keys).masker().fallback_name == expected


def test_an_upload_in_chat_is_split_by_entropy():
    from lf_ext.masks.geometry import grid_for_arch

    upload = _upload()
    grid = grid_for_arch("qwen2_vl", *upload.size, image_max_pixels=50176)
    chat = _labeler(None).labels(upload, None, grid)
    assert chat.any() and not chat.all() and chat[:3, :3].all()  # the textured corner is object
    assert not _labeler(True).labels(upload, None, grid).any()  # training: 'none', all background


def test_auto_never_falls_back_to_the_provider_itself():
    from lf_ext.masks.pipeline import fallback_for

    assert fallback_for("entropy", "auto", inference=True) == "none"
    assert fallback_for("none", "auto", inference=True) == "none"


def test_chat_model_logs_the_entropy_fallback(tiny_dir, caplog):
    from llamafactory.chat import ChatModel

    chat = ChatModel(dict(model_name_or_path=str(tiny_dir("qwen2_vl")), template="qwen2_vl_bgobj", infer_dtype="float32",
                          image_max_pixels=50176, max_new_tokens=2, do_sample=False, bgobj_mask_provider="dataset"))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lf_ext"):
        chat.chat([{"role": "user", "content": "<image>What color is the object?"}], images=[_upload()])
    assert "using 'entropy'" in caplog.text


def test_infer_recipes_name_their_fallback():
    import yaml

    for recipe in sorted((REPO_ROOT / "yaml").glob("*/infer.yaml")):
        assert yaml.safe_load(recipe.read_text())["bgobj_mask_fallback"] == "entropy", recipe
