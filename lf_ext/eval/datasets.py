"""Reading LLaMA-Factory datasets the way LLaMA-Factory reads them: one ``dataset_info.json`` reader.

A dataset folder holds ``dataset_info.json``; each local entry names a ``file_name`` (a .json list,
a .jsonl file, or a folder of them), a ``formatting`` (``sharegpt`` or ``alpaca``) and optional
``columns``/``tags`` that rename the fields (LLaMA-Factory's ``DatasetAttr`` defaults: sharegpt
messages in ``conversations`` with ``from``/``value``/``human``/``gpt``; images only where
``columns.images`` names a column). :func:`read_records` returns every record normalised to::

    {"messages": [{"role": "user" | "assistant" | "system" | ..., "content": str}, ...],
     "images": [...], "videos": [...], ...every other field of the record unchanged (masks, boxes, meta...)}

Media paths are resolved as LLaMA-Factory does (:func:`media_path`). Hub datasets are skipped:
their files are not here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

INFO_FILE = "dataset_info.json"
SHAREGPT_DEFAULTS = {"messages": "conversations", "role_tag": "from", "content_tag": "value", "user_tag": "human",
                     "assistant_tag": "gpt", "observation_tag": "observation", "function_tag": "function_call",
                     "system_tag": "system"}  # fmt: skip
ALPACA_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output"}
ROLES = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "observation",
         "function_tag": "function", "system_tag": "system"}  # fmt: skip


def path_key(path: str | Path) -> str:
    """The form in which file paths are compared (absolute, case-normalised)."""
    return os.path.normcase(os.path.abspath(path))


def dataset_names(lf_args: Mapping[str, Any], keys: Iterable[str] = ("dataset", "eval_dataset")) -> list[str]:
    """Dataset names listed under ``keys`` of LLaMA-Factory arguments (comma-separated strings or lists)."""
    names = []
    for key in keys:
        value = lf_args.get(key) or ""
        names += [n.strip() for n in (value if isinstance(value, (list, tuple)) else str(value).split(",")) if n.strip()]
    return names


def dataset_info(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a LLaMA-Factory dataset folder holds {INFO_FILE}")
    return json.loads(path.read_text())


def dataset_entry(dataset_dir: str | Path, name: str) -> dict[str, Any]:
    info = dataset_info(dataset_dir)
    if name not in info:
        raise ValueError(f"dataset '{name}' is not in {Path(dataset_dir) / INFO_FILE} (has: {', '.join(info)})")
    return info[name]


def media_path(media: str, base_dir: str | Path) -> str:
    """A media path as LLaMA-Factory resolves it: inside ``base_dir`` (``media_dir``) when the file is there."""
    joined = os.path.join(str(base_dir), media)
    return joined if os.path.isfile(joined) else media


def record_images(record: Mapping[str, Any], base_dir: str | Path) -> list[str]:
    """Paths of a normalised record's ``images`` as LLaMA-Factory opens them."""
    return [media_path(image, base_dir) if isinstance(image, str) else image for image in record.get("images") or []]


def record_videos(record: Mapping[str, Any], base_dir: str | Path) -> list:
    """A normalised record's ``videos`` as LLaMA-Factory opens them: a file, or a list of frame files."""
    return [[media_path(f, base_dir) for f in video] if isinstance(video, list) else media_path(video, base_dir)
            for video in record.get("videos") or []]  # fmt: skip


def video_key(video: Any) -> str:
    """The path a video is known by: its file, or the first file of a frame list."""
    return str(video[0]) if isinstance(video, (list, tuple)) and video else str(video)


def _raw_records(path: Path) -> Iterator[dict]:
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")):
            yield from _raw_records(child)
        return
    if path.suffix == ".jsonl":
        with path.open() as handle:
            for number, line in enumerate(handle):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path} line {number + 1}: not JSON ({err})") from None
        return
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: a dataset file holds a JSON list of records")
    yield from data


def _normalise(raw: dict, entry: Mapping[str, Any], number: int, name: str) -> dict:
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    formatting = entry.get("formatting", "alpaca")
    record = {k: v for k, v in raw.items()}
    if formatting == "sharegpt":
        names = {**SHAREGPT_DEFAULTS, **columns, **tags}
        turns = raw.get(names["messages"])
        if not isinstance(turns, list):
            raise ValueError(f"dataset '{name}' record {number}: no '{names['messages']}' list of messages")
        roles = {names[tag]: role for tag, role in ROLES.items()}
        record["messages"] = [{"role": roles.get(turn.get(names["role_tag"]), turn.get(names["role_tag"])),
                               "content": turn.get(names["content_tag"], "")} for turn in turns]  # fmt: skip
    elif formatting == "alpaca":
        names = {**ALPACA_DEFAULTS, **columns}
        prompt = "\n".join(str(raw[names[k]]) for k in ("prompt", "query") if raw.get(names[k]))
        record["messages"] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(raw.get(names["response"], ""))}]
    else:
        raise ValueError(f"dataset '{name}': formatting '{formatting}' is not read here (sharegpt or alpaca)")
    for media in ("images", "videos"):
        column = columns.get(media)
        values = raw.get(column) if column else None
        record[media] = [] if values is None else values if isinstance(values, list) else [values]
    return record


def read_records(dataset_dir: str | Path, name: str) -> list[dict]:
    """Every record of a local dataset of ``dataset_dir``, normalised (see the module docstring)."""
    entry = dataset_entry(dataset_dir, name)
    if "file_name" not in entry:
        raise ValueError(f"dataset '{name}' is not a local file dataset (file_name missing)")
    path = Path(dataset_dir) / entry["file_name"]
    if not path.exists():
        raise FileNotFoundError(f"dataset '{name}': {path} not found")
    return [_normalise(raw, entry, number, name) for number, raw in enumerate(_raw_records(path))]


def read_datasets(dataset_dir: str | Path, names: Iterable[str]) -> Iterator[tuple[str, list[dict]]]:
    """(name, records) of each named local dataset; hub and unknown datasets are skipped."""
    info = dataset_info(dataset_dir)
    for name in names:
        if name in info and "file_name" in info[name]:
            yield name, read_records(dataset_dir, name)


class RecordLocator:
    """Which record of the command's datasets an image path comes from, for error messages.

    Built on first use from LLaMA-Factory arguments (``dataset``, ``eval_dataset``, ``dataset_dir``):
    ``describe(path)`` gives e.g. ``dataset 'scenes_train' record 12 (scenes_train.json)``."""

    def __init__(self, lf_args: Mapping[str, Any]):
        self.lf_args = lf_args
        self._where: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        where: dict[str, str] = {}
        dataset_dir = self.lf_args.get("dataset_dir", "data")
        try:
            info = dataset_info(dataset_dir)
            for name, records in read_datasets(dataset_dir, dataset_names(self.lf_args)):
                for number, record in enumerate(records):
                    media = record_images(record, dataset_dir) + [video_key(v) for v in record_videos(record, dataset_dir)]
                    for path in media:
                        if isinstance(path, str):
                            where.setdefault(path_key(path), f"dataset '{name}' record {number} ({info[name]['file_name']})")
        except (OSError, ValueError):
            pass  # no readable dataset: messages just lack the record
        return where

    def describe(self, path: str | None) -> str | None:
        if not path:
            return None
        if self._where is None:
            self._where = self._build()
        return self._where.get(path_key(path))
