"""Masks supplied with the data: a mask image, boxes or polygons per image, found by image path.

LLaMA-Factory drops every column but the media when it converts a dataset, so masks are not carried
through it: they are looked up by the image's path in a :class:`MaskIndex` built from the dataset
files themselves (fields parallel to ``images``) or from a folder written by ``lf-ext masks precompute``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from lf_ext.eval.datasets import dataset_names, path_key, read_datasets, record_images
from lf_ext.masks.base import MaskError, MaskRequest, MissingMaskError
from lf_ext.masks.registry import register_mask_provider
from lf_ext.masks.spec import MaskQuality, render_spec

INDEX_FILE = "index.json"
SPEC_FIELDS = {"masks": "mask", "boxes": "boxes", "polygons": "polygons"}


class MaskIndex:
    """Image path -> mask spec (``{"mask": path}``, ``{"boxes": [...]}`` or ``{"polygons": [...]}``)."""

    def __init__(self, specs: Mapping[str, Mapping[str, Any]] | None = None):
        self.specs = {path_key(k): dict(v) for k, v in (specs or {}).items()}

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, image_path: str | None) -> dict | None:
        return self.specs.get(path_key(image_path)) if image_path else None

    def add(self, image: str, kind: str, value: Any, where: str) -> None:
        """Add one image's mask, box list or polygon list. An image listed by several records (e.g. GQA: one
        record per question) gets the union of their boxes and polygons: its object is every region any of
        them names, so every question about it sees the same split (and the same cached background).
        Two different mask files for one image are an error."""
        spec = self.specs.setdefault(path_key(image), {})
        if kind == "mask":
            if spec.get("mask", value) != value:
                raise MaskError(f"{where}: image {image} already has the mask {spec['mask']}, here {value}")
            if any(spec.get(k) for k in ("boxes", "polygons")):
                raise MaskError(f"{where}: image {image} has boxes/polygons in another record and a mask file here")
            spec["mask"] = value
            return
        if spec.get("mask"):
            raise MaskError(f"{where}: image {image} has a mask file in another record and {kind} here")
        merged = spec.setdefault(kind, [])
        for shape in value or []:
            if shape not in merged:
                merged.append(shape)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], base_dir: str | Path, name: str = "") -> "MaskIndex":
        """Read ``masks``/``boxes``/``polygons`` lists parallel to each record's ``images``."""
        index = cls()
        index.extend(records, base_dir, name)
        return index

    def extend(self, records: Iterable[Mapping[str, Any]], base_dir: str | Path, name: str = "") -> None:
        for number, record in enumerate(records):
            where = f"dataset '{name}' record {number}" if name else f"record {number}"
            images = record_images(record, base_dir)
            for field, kind in SPEC_FIELDS.items():
                values = record.get(field)
                if values is None:
                    continue
                if len(values) != len(images):
                    raise MaskError(f"{where}: '{field}' has {len(values)} entries for {len(images)} images")
                for image, value in zip(images, values):
                    if value is None:
                        continue
                    self.add(image, kind, str(Path(base_dir) / value) if kind == "mask" else value, where)

    @classmethod
    def from_dir(cls, mask_dir: str | Path) -> "MaskIndex":
        """Read a folder written by ``lf-ext masks precompute`` (``index.json``: image path -> mask file)."""
        index_file = Path(mask_dir) / INDEX_FILE
        if not index_file.is_file():
            raise MaskError(f"bgobj_mask_dir: no {INDEX_FILE} in {mask_dir} (run `lf-ext masks precompute`)")
        entries = json.loads(index_file.read_text())["masks"]
        return cls({image: {"mask": str(Path(mask_dir) / mask)} for image, mask in entries.items()})

    @classmethod
    def from_dataset(cls, dataset_dir: str | Path, names: Iterable[str]) -> "MaskIndex":
        """Read the named datasets of a LLaMA-Factory ``dataset_info.json`` folder."""
        merged = cls()
        for name, records in read_datasets(dataset_dir, names):
            merged.extend(records, dataset_dir, name)
        return merged


@register_mask_provider("dataset")
class DatasetMaskProvider:
    """Object mask from the dataset's own annotations (or precomputed masks), looked up by image path."""

    def __init__(self, index: MaskIndex):
        self.index = index
        self.quality = MaskQuality()

    @classmethod
    def from_settings(cls, settings, lf_args: Mapping[str, Any] | None = None, **context) -> "DatasetMaskProvider":
        if settings.bgobj_mask_dir:
            return cls(MaskIndex.from_dir(settings.bgobj_mask_dir))
        lf_args = lf_args or {}
        names = dataset_names(lf_args)
        dataset_dir = lf_args.get("dataset_dir", "data")
        if not names or not (Path(dataset_dir) / "dataset_info.json").is_file():
            return cls(MaskIndex())
        return cls(MaskIndex.from_dataset(dataset_dir, names))

    def spec_for(self, request: MaskRequest) -> dict | None:
        """The request's own mask fields, else the index entry for its path, else None."""
        own = {k: request.record[k] for k in SPEC_FIELDS.values() if request.record.get(k) is not None}
        return own or self.index.get(request.source)

    def __call__(self, request: MaskRequest) -> np.ndarray:
        spec = self.spec_for(request)
        if not spec:
            raise MissingMaskError(f"{request.describe()}: no mask for this image in the dataset or bgobj_mask_dir")
        size = request.original_size or request.image.size
        mask = render_spec(spec, size, request.describe(), self.quality)
        return np.asarray(request.to_geometry(mask), dtype=np.float32) / 255.0
