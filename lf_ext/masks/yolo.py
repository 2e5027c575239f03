"""The ``yolo`` mask provider: object masks from a local ultralytics YOLO checkpoint.

Also holds the two helpers every ultralytics call in lf_ext goes through:
:func:`import_ultralytics` (offline import) and :func:`torch_state_kept` (undo ultralytics'
changes to torch's process-wide state).
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np

from .base import MaskError, MaskRequest
from .registry import register_mask_provider

MODES: tuple[str, ...] = ("union", "top1")
MAX_DET = 100  # detections kept per image (ultralytics' default 300 only slows down NMS and mask assembly)
# Read by ultralytics at import time: no DNS probe / PyPI / analytics (ONLINE=False), no pip auto-install.
OFFLINE_ENV: dict[str, str] = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}


def import_ultralytics() -> ModuleType:
    """Import ultralytics with every network feature off; returns the module.

    Sets ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=0`` (inherited by child processes), imports
    torch first so that ultralytics' ``OMP_NUM_THREADS=1`` default cannot shrink torch's thread
    pool, removes that variable again if the caller had not set it, and switches off the usage
    analytics (also off by ``YOLO_OFFLINE`` when ultralytics was not imported before).
    """
    os.environ.update(OFFLINE_ENV)
    omp = os.environ.get("OMP_NUM_THREADS")
    import torch  # noqa: F401  (before ultralytics, see above)
    import ultralytics
    from ultralytics.utils import events

    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    events.events.enabled = False
    return ultralytics


@contextlib.contextmanager
def torch_state_kept(num_threads: int | None = None) -> Iterator[None]:
    """Run a block with ``num_threads`` torch threads (default: unchanged), then restore torch's global state.

    ultralytics calls ``torch.set_num_threads(cpu_count - 1)`` (1 on a 2-core machine) when it
    picks a device, seeds the global RNGs and toggles deterministic algorithms while training;
    none of that should leak into the rest of the process.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != deterministic:  # the setter imports torch._inductor (seconds): call it only when needed
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])


def _numpy(values: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _keep(conf: np.ndarray, cls: np.ndarray, min_conf: float, classes: Sequence[int] | None,
          mode: str) -> np.ndarray:
    """Indices of the detections to paint: filtered by confidence/class, all or the single best."""
    keep = conf >= min_conf
    if classes is not None:
        keep &= np.isin(cls.astype(int), list(classes))
    idx = np.flatnonzero(keep)
    if mode == "top1" and idx.size:
        idx = idx[[int(np.argmax(conf[idx]))]]
    return idx


def _filled_boxes(xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of axis-aligned boxes (pixel coordinates, any pixel the box touches) as a bool mask."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in xyxy:
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        mask[r0:r1, c0:c1] = True
    return mask


def _resized(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w) masks at (height, width), nearest neighbour (a no-op with ``retina_masks``)."""
    if masks.shape[1:] == (height, width):
        return masks > 0.5
    import cv2

    return np.stack([cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
                     for m in masks])


def mask_from_result(result: Any, size: tuple[int, int], *, conf: float = 0.25,
                     classes: Sequence[int] | None = None, mode: str = "union") -> np.ndarray:
    """Object mask (float32, ``size`` = (H, W), values 0/1) from one ultralytics ``Results``.

    Uses the instance masks of a segmentation result and filled boxes of a detection result
    (``result.masks is None``). ``mode`` "union" paints every kept detection, "top1" only the most
    confident one; no kept detection gives all zeros.
    """
    height, width = size
    out = np.zeros((height, width), dtype=np.float32)
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return out
    idx = _keep(_numpy(boxes.conf).reshape(-1), _numpy(boxes.cls).reshape(-1), conf, classes, mode)
    if idx.size == 0:
        return out
    if getattr(result, "masks", None) is not None:
        painted = _resized(_numpy(result.masks.data)[idx], height, width).any(axis=0)
    else:
        painted = _filled_boxes(_numpy(boxes.xyxy).reshape(-1, 4)[idx], height, width)
    out[painted] = 1.0
    return out


def _validate(classes: Sequence[int] | None, conf: float, mode: str, imgsz: int | None) -> list[int] | None:
    if mode not in MODES:
        raise ValueError(f"yolo mask provider: mode must be one of {MODES}, got {mode!r}")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
        raise ValueError(f"yolo mask provider: conf must be a number in [0, 1], got {conf!r}")
    if imgsz is not None and (isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32):
        raise ValueError(f"yolo mask provider: imgsz must be an integer >= 32 or None, got {imgsz!r}")
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                    for c in classes):
        raise ValueError(f"yolo mask provider: classes must be a list of class ids >= 0, got {classes!r}")
    return list(classes)


def load_yolo(weights: str | Path) -> Any:
    """An ultralytics ``YOLO`` model from an existing local file; :class:`MaskError` otherwise.

    The path is made absolute first: ultralytics would download a missing or corrupt *bare*
    official name such as ``yolov8n-seg.pt`` from GitHub.
    """
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise MaskError(f"yolo mask provider: weights file not found: {path}")
    ultralytics = import_ultralytics()
    try:
        with torch_state_kept():
            model = ultralytics.YOLO(str(path))
    except Exception as e:  # ultralytics raises TypeError/RuntimeError/... for damaged files
        raise MaskError(f"yolo mask provider: cannot load weights {path}: {type(e).__name__}: {e}") from e
    if model.task not in ("segment", "detect"):
        raise MaskError(f"yolo mask provider: {path} is a '{model.task}' model, need 'segment' or 'detect'")
    return model


def trained_imgsz(model: Any, fallback: int = 448) -> int:
    """The square image size a checkpoint was trained at (ultralytics keeps it), else ``fallback``."""
    size = getattr(model, "overrides", {}).get("imgsz")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 32 else fallback


@register_mask_provider("yolo")
class YoloMaskProvider:
    """Object masks predicted by a YOLO segmentation (instance masks) or detection (filled boxes) model.

    ``imgsz`` is the inference size; ``None`` uses the size the checkpoint was trained at (256 for
    :func:`lf_ext.masks.yolo_train.train_yolo`'s default), or 448 when the checkpoint does not say.
    """

    def __init__(self, weights: str | Path, classes: Sequence[int] | None = None, conf: float = 0.25,
                 mode: str = "union", imgsz: int | None = None, device: str = "cpu") -> None:
        self.classes = _validate(classes, conf, mode, imgsz)
        self.conf, self.mode, self.device = float(conf), mode, device
        self.model = load_yolo(weights)
        self.imgsz = imgsz or trained_imgsz(self.model)
        self.weights = str(Path(weights).expanduser().resolve())

    @classmethod
    def from_options(cls, weights: str, classes: list[int] | None = None, conf: float = 0.25,
                     mode: str = "union", imgsz: int | None = None, device: str = "cpu") -> "YoloMaskProvider":
        return cls(weights, classes=classes, conf=conf, mode=mode, imgsz=imgsz, device=device)

    @classmethod
    def from_settings(cls, settings: Any, **context: Any) -> "YoloMaskProvider":
        """Build from the ``bgobj_yolo_*`` keys (the weights path was checked when the keys were parsed)."""
        classes = [int(c) for c in settings.bgobj_yolo_classes.split(",") if c.strip()] or None
        return cls(settings.bgobj_yolo_weights, classes=classes, conf=settings.bgobj_yolo_conf,
                   mode=settings.bgobj_yolo_mode)

    def predict(self, image: Any) -> Any:
        """The ultralytics ``Results`` for one RGB PIL image (quiet, masks at the image's size)."""
        with torch_state_kept():
            results = self.model.predict(image.convert("RGB"), imgsz=self.imgsz, conf=self.conf,
                                         classes=self.classes, device=self.device, retina_masks=True,
                                         max_det=MAX_DET, verbose=False, save=False)
        return results[0]

    def __call__(self, request: MaskRequest) -> np.ndarray:
        image = request.image
        try:
            result = self.predict(image)
        except Exception as e:
            raise MaskError(f"yolo mask provider ({self.weights}) failed on {request.describe()}: {e}") from e
        return mask_from_result(result, (image.height, image.width), conf=self.conf, classes=self.classes,
                                mode=self.mode)
