"""Tests for the YOLO mask provider and its offline scenes trainer (lf_ext.masks.yolo, yolo_train)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from lf_ext.masks.base import MaskError, MaskRequest
from lf_ext.masks.registry import MASK_PROVIDERS
from lf_ext.masks.yolo import YoloMaskProvider, mask_from_result
from lf_ext.masks.yolo_train import scene_images, scenes_to_yolo, train_yolo


@pytest.fixture
def no_network(monkeypatch):
    """Make every DNS lookup and internet connection fail; yields the list of attempts."""
    attempts: list[str] = []

    def refuse(what):
        def fail(*args, **kwargs):
            attempts.append(f"{what}{args[:2]!r}")
            raise OSError(f"network disabled in tests ({what})")
        return fail

    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return refuse("connect")(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts


def _request(image: Image.Image) -> MaskRequest:
    return MaskRequest(image=image, unit=28, to_geometry=lambda im: im)


class _Boxes:
    """The part of ultralytics' ``Boxes`` that mask_from_result reads."""

    def __init__(self, conf, cls, xyxy):
        self.conf, self.cls = np.asarray(conf, np.float32), np.asarray(cls, np.float32)
        self.xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.conf)


def _fake_result(conf, cls, xyxy, masks=None) -> SimpleNamespace:
    """A stand-in for one ultralytics ``Results``: detection-style when ``masks`` is None."""
    return SimpleNamespace(boxes=_Boxes(conf, cls, xyxy), masks=None if masks is None else SimpleNamespace(data=masks))


def _square_masks(size=(40, 60)) -> np.ndarray:
    """Three disjoint instance masks (N, H, W)."""
    masks = np.zeros((3, *size), np.float32)
    masks[0, 0:10, 0:10] = 1
    masks[1, 20:30, 20:30] = 1
    masks[2, 30:40, 50:60] = 1
    return masks


# --------------------------------------------------------------------------- conversion
def test_scenes_to_yolo_labels(scenes_dir, tmp_path):
    data_yaml = scenes_to_yolo(scenes_dir, tmp_path / "ds")
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "object"} and data["val"] == "images/val"
    for split, yolo_split in (("train", "train"), ("test", "val")):
        records = scene_images(scenes_dir, split)
        assert len(list((tmp_path / "ds" / "images" / yolo_split).iterdir())) == len(records) > 0
        for rel, rec in records.items():
            label = tmp_path / "ds" / "labels" / yolo_split / (Path(rel).stem + ".txt")
            lines = label.read_text().splitlines()
            assert len(lines) == len(rec["meta"]["objects"])
            gt = np.asarray(Image.open(scenes_dir / rec["masks"][0])) > 0
            painted = np.zeros(gt.shape, np.uint8)
            for line in lines:
                cls, *coords = line.split()
                xy = np.array(coords, float).reshape(-1, 2)
                assert cls == "0" and len(xy) >= 3 and xy.min() >= 0.0 and xy.max() <= 1.0
                pixels = np.rint(xy * [gt.shape[1], gt.shape[0]] - 0.5).astype(np.int32)
                cv2.fillPoly(painted, [pixels], 1)
            assert ((painted > 0) & gt).sum() / ((painted > 0) | gt).sum() > 0.97


def test_scenes_to_yolo_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scenes_train.json"):
        scenes_to_yolo(tmp_path / "nothing", tmp_path / "ds")


# --------------------------------------------------------------------------- result -> mask
def test_union_top1_conf_and_class_filter():
    result = _fake_result([0.5, 0.9, 0.1], [0, 1, 0], [[0, 0, 10, 10]] * 3, _square_masks())
    union = mask_from_result(result, (40, 60))
    assert union.dtype == np.float32 and union.shape == (40, 60)
    np.testing.assert_array_equal(union, _square_masks()[:2].max(0))  # conf 0.1 < 0.25 dropped
    top1 = mask_from_result(result, (40, 60), mode="top1")
    np.testing.assert_array_equal(top1, _square_masks()[1])  # most confident, not the first
    only_cls0 = mask_from_result(result, (40, 60), classes=[0], conf=0.05)
    np.testing.assert_array_equal(only_cls0, _square_masks()[[0, 2]].max(0))
    assert mask_from_result(result, (40, 60), conf=0.95).sum() == 0


def test_no_detections_and_low_res_masks():
    empty = _fake_result(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros((0, 40, 60), np.float32))
    assert (mask_from_result(empty, (40, 60)) == 0).all()
    small = _square_masks()[:, ::2, ::2]  # (3, 20, 30) masks, e.g. without retina_masks
    result = _fake_result([0.9], [0], [[0, 0, 1, 1]], small[:1])
    np.testing.assert_array_equal(mask_from_result(result, (40, 60)), _square_masks()[0])


def test_detection_result_gives_filled_boxes():
    result = _fake_result([0.8, 0.6], [0, 0], [[2.4, 3.0, 7.0, 9.5], [50.0, 30.0, 70.0, 45.0]])
    union = mask_from_result(result, (40, 60))
    expected = np.zeros((40, 60), np.float32)
    expected[3:10, 2:7] = 1  # every pixel the box touches
    expected[30:40, 50:60] = 1  # clipped to the image
    np.testing.assert_array_equal(union, expected)
    top1 = mask_from_result(result, (40, 60), mode="top1")
    assert top1.sum() == 7 * 5


# --------------------------------------------------------------------------- provider
def test_missing_or_broken_weights(tmp_path, monkeypatch, no_network):
    missing = tmp_path / "nope.pt"
    with pytest.raises(MaskError, match=str(missing)):
        YoloMaskProvider.from_options(str(missing))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(MaskError, match=str(broken)):
        YoloMaskProvider.from_options(str(broken))
    monkeypatch.chdir(tmp_path)  # a bare official name must not be downloaded
    with pytest.raises(MaskError, match="yolov8n-seg.pt"):
        YoloMaskProvider.from_options("yolov8n-seg.pt")
    with pytest.raises(ValueError, match="mode"):
        YoloMaskProvider.from_options(str(missing), mode="best")
    assert no_network == []


def test_registered_and_import_is_light():
    assert MASK_PROVIDERS["yolo"] is YoloMaskProvider
    code = ("import sys, lf_ext.masks.yolo, lf_ext.masks.yolo_train; "
            "print(json.dumps([m for m in ('ultralytics', 'torch', 'cv2') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_provider_call_uses_its_options(monkeypatch):
    provider = YoloMaskProvider.__new__(YoloMaskProvider)  # no checkpoint needed for the plumbing
    provider.classes, provider.conf, provider.mode, provider.weights = None, 0.25, "top1", "fake.pt"
    monkeypatch.setattr(provider, "predict",
                        lambda image: _fake_result([0.5, 0.9], [0, 0], [[0, 0, 1, 1]] * 2, _square_masks()[:2]))
    mask = provider(_request(Image.new("RGB", (60, 40))))
    np.testing.assert_array_equal(mask, _square_masks()[1])


@pytest.mark.integration
def test_train_tiny_then_predict(scenes_dir, tmp_path, no_network):
    import torch

    threads = torch.get_num_threads()
    best = train_yolo(scenes_dir, tmp_path / "yolo", epochs=1, imgsz=160, batch=4, seed=0, progress=False,
                      threads=1)  # one thread: robust when other tests share the cores
    assert best.is_file() and best.suffix == ".pt" and tmp_path in best.parents
    provider = YoloMaskProvider.from_options(str(best), conf=0.0)
    assert provider.imgsz == 160  # inference size defaults to the training size stored in the checkpoint
    rel = next(iter(scene_images(scenes_dir, "test")))
    image = Image.open(scenes_dir / rel).convert("RGB").resize((196, 168))
    for mode in ("union", "top1"):
        provider.mode = mode
        mask = provider(_request(image))
        assert mask.shape == (168, 196) and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert torch.get_num_threads() == threads  # ultralytics' thread change does not leak
    assert no_network == []
