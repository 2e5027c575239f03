"""What every converter shares: errors that name the record, media lookup, prompt pieces, and the resumable writer.

Output: ``OUT/<name>.jsonl`` (LLaMA-Factory sharegpt records, one per line) registered in ``OUT/dataset_info.json``.

Resume: ``OUT/.convert-state/<names>.json`` records how many source items were consumed and the byte length of each
output file at the last checkpoint (written after the outputs were flushed and synced). A re-run truncates the outputs
to those lengths (dropping lines written after the checkpoint) and skips the consumed items, so nothing is duplicated;
a finished conversion re-run only reports its counts. Changing the options of an unfinished or finished conversion
into the same folder is an error unless ``overwrite`` is given.

Loading: LLaMA-Factory reads ``.jsonl`` with ``datasets``, which infers the schema from the first ~10 MB chunk and
fails on a later record of another shape (a new key, a list where the first chunk only had nulls). So every record
of a file has the same keys (top level and ``meta``; the writer checks this), converters write ``""``/``[]`` rather
than ``null`` for absent strings and lists, and a JSON string for a value whose shape varies (an AndroidControl
action). The remaining nullable values (a ``boxes`` entry, AndroidControl's ``target_box``) come mixed with non-null
ones from the first records on in real data.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

STATE_DIR = ".convert-state"
DATASET_INFO = "dataset_info.json"
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHORT_ANSWER = "Answer the question using a single word or phrase."
CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
RUN_OPTIONS = ("skip_missing", "limit", "overwrite", "progress", "checkpoint_every")


class ConvertError(ValueError):
    """A format error in the source data, naming the task, the file (as given: a display name) and the record."""

    def __init__(self, task: str, file: str | Path | None, record: Any, message: str):
        where = f"{task}: {file}" if file else f"{task}:"
        if record is not None:
            where += f" record {str(record)!r}"
        super().__init__(f"{where}: {message}")


class MissingMedia(ConvertError):
    """A referenced image or video is not on disk (an error, or a skipped item under ``skip_missing``)."""


@dataclass
class SourceItem:
    """One unit of progress: a question, a row, an episode. ``key`` names it in errors."""

    file: str
    key: str
    data: Any


class Converter:
    """One benchmark's reader. Subclasses are registered with ``register_converter(name)``; they yield
    :class:`SourceItem` s in a deterministic order (``items``) and turn each into records (``records``)."""

    task = ""

    def __init__(self, src: str | Path, **options: Any):
        self.src = Path(src).resolve()
        if not self.src.is_dir():
            raise ValueError(f"{self.task}: --src {src} is not a folder")
        unknown = sorted(set(options) - set(self.defaults()))
        if unknown:
            raise ValueError(f"{self.task}: unknown options {', '.join(unknown)}; known: {', '.join(self.defaults())}")
        self.options = {**self.defaults(), **{k: v for k, v in options.items() if v is not None}}
        self.counters: dict[str, int] = {}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Task options and their defaults (the CLI flags are these names with dashes)."""
        return {}

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add the task's options to an argparse parser (defaults None: :meth:`defaults` decides)."""

    def outputs(self) -> dict[str, tuple[str, ...]]:
        """Output name -> media columns (``("images",)`` or ``("videos",)``) of each file written."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs the same conversion (for resume)."""
        return {"task": self.task, "src": str(self.src), "options": _jsonable(self.options)}

    def total(self) -> int | None:
        """Number of items, when cheap to know (for the progress bar)."""
        return None

    def items(self) -> Iterator[SourceItem]:
        raise NotImplementedError

    def records(self, item: SourceItem, out: Path) -> list[tuple[str, dict]]:
        """``(output name, record)`` pairs for one item; may write media under ``out``."""
        raise NotImplementedError

    # helpers for subclasses
    def error(self, item_or_file: SourceItem | str | Path | None, message: str, record: Any = None) -> ConvertError:
        if isinstance(item_or_file, SourceItem):
            return ConvertError(self.task, item_or_file.file, item_or_file.key, message)
        return ConvertError(self.task, item_or_file, record, message)

    def missing(self, item: SourceItem, what: str) -> MissingMedia:
        return MissingMedia(self.task, item.file, item.key, f"{what} not found")

    def require(self, item: SourceItem, record: dict, key: str, kind: type | tuple = str) -> Any:
        """``record[key]``, or a :class:`ConvertError` naming the item when it is missing or of the wrong type."""
        if not isinstance(record, dict):
            raise self.error(item, f"expected a JSON object, found {type(record).__name__}")
        if key not in record or record[key] is None:
            raise self.error(item, f"missing '{key}'")
        if not isinstance(record[key], kind):
            raise self.error(item, f"'{key}' is {type(record[key]).__name__}, expected {_kind_name(kind)}")
        return record[key]

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def _kind_name(kind: type | tuple) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def resolve(src: Path, name: str | Path) -> Path:
    """An option naming a file or folder: absolute, or relative to ``src``."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else src / path


class MediaDir:
    """The files of one folder, found by exact name or by stem whatever the extension (listed once, lazily)."""

    def __init__(self, root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES):
        self.root = Path(root).resolve()
        self.suffixes = suffixes
        self._by_stem: dict[str, str] | None = None

    def _index(self) -> dict[str, str]:
        if self._by_stem is None:
            rank = {suffix: i for i, suffix in enumerate(self.suffixes)}
            by_stem: dict[str, tuple[int, str]] = {}
            if self.root.is_dir():
                with os.scandir(self.root) as entries:
                    for entry in entries:
                        stem, suffix = os.path.splitext(entry.name)
                        order = (rank.get(suffix.lower(), len(rank)), entry.name)
                        if entry.is_file() and (stem not in by_stem or order < by_stem[stem]):
                            by_stem[stem] = order
            self._by_stem = {stem: name for stem, (_, name) in by_stem.items()}
        return self._by_stem

    def find(self, name: str) -> Path | None:
        """``root/name`` if it is a file, else the file whose stem is ``name`` (or ``name`` without extension)."""
        exact = self.root / name
        if exact.is_file():
            return exact
        index = self._index()
        found = index.get(name) or index.get(os.path.splitext(name)[0])
        return self.root / found if found else None


def write_once(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` unless an earlier run already wrote it (same size); atomic (tmp + rename)."""
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def image_suffix(data: bytes, fallback: str = "") -> str | None:
    """The file extension of encoded image bytes (by magic number), else ``fallback``'s if it is an image name."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    suffix = os.path.splitext(fallback)[1].lower()
    return suffix if suffix in IMAGE_SUFFIXES else None


def chat(user: str, answer: str) -> list[dict[str, str]]:
    """A one-turn sharegpt conversation."""
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def option_lines(options: Iterable[str]) -> str:
    """Multiple-choice options as ``A. ...`` lines."""
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def check_record(task: str, file: str, key: str, record: dict) -> None:
    """Placeholders match media: one ``<image>`` per image, one ``<video>`` per video, ``boxes`` parallel to images."""
    text = "".join(message["content"] for message in record["messages"] if message["role"] == "user")
    for column, token in (("images", IMAGE_TOKEN), ("videos", VIDEO_TOKEN)):
        found, expected = text.count(token), len(record.get(column) or [])
        if found != expected:
            raise ConvertError(task, file, key, f"{found} {token} placeholders for {expected} {column}")
    if "boxes" in record and len(record["boxes"]) != len(record.get("images") or []):
        raise ConvertError(task, file, key, f"{len(record['boxes'])} boxes entries for {len(record['images'])} images")


def _shape(record: dict) -> list:
    return [sorted(record), sorted(record.get("meta") or {})]


def dataset_info_entry(name: str, columns: tuple[str, ...]) -> dict:
    return {
        "file_name": f"{name}.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", **{column: column for column in columns}},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def write_dataset_info(out: Path, entries: dict[str, dict]) -> Path:
    """Merge ``entries`` into ``OUT/dataset_info.json`` (other datasets there are kept)."""
    path = out / DATASET_INFO
    info: dict = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); fix or remove it") from None
        if not isinstance(info, dict):
            raise ValueError(f"{path}: expected a JSON object")
    info.update(entries)
    _atomic_write(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class _State:
    path: Path
    fingerprint: dict
    outputs: dict[str, dict] = field(default_factory=dict)  # name -> {"bytes", "records", "shape"}
    consumed: int = 0
    skipped: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    SAVED = ("fingerprint", "outputs", "consumed", "skipped", "counters", "finished")

    @classmethod
    def load(cls, path: Path) -> _State | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path=path, **{k: data[k] for k in _State.SAVED})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: damaged conversion state ({err!r}); rerun with --overwrite") from None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: getattr(self, k) for k in _State.SAVED}
        _atomic_write(self.path, json.dumps(data, indent=1) + "\n")


def run_conversion(converter: Converter, out: str | Path, *, skip_missing: bool = False, limit: int | None = None,
                   overwrite: bool = False, progress: bool = True, checkpoint_every: int = 1000) -> dict:  # fmt: skip
    """Convert (or resume converting) into ``out``; returns a summary dict.

    ``skip_missing``: items whose media are missing are skipped and counted instead of raising.
    ``limit``: stop once this run has written at least this many records (the conversion stays unfinished; a later
    run continues it). ``checkpoint_every``: items between checkpoints (also checkpointed every 10 s).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    task, outputs = converter.task, converter.outputs()
    paths = {name: out / f"{name}.jsonl" for name in outputs}
    state_path = out / STATE_DIR / f"{'+'.join(sorted(outputs))}.json"
    fingerprint = _jsonable(converter.fingerprint())

    if overwrite:
        for path in [*paths.values(), state_path]:
            path.unlink(missing_ok=True)
    state = _State.load(state_path)
    if state is None:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise ValueError(f"{task}: {', '.join(existing)} exists but was not written by this converter "
                             "(no conversion state); pass --overwrite to replace it")  # fmt: skip
        state = _State(path=state_path, fingerprint=fingerprint)
    elif state.fingerprint != fingerprint:
        raise ValueError(f"{task}: {out} holds a conversion with other options ({state.fingerprint}); "
                         "pass --overwrite to start again, or use another --out")  # fmt: skip
    resumed = state.consumed > 0 or state.finished
    for name in outputs:
        state.outputs.setdefault(name, {"bytes": 0, "records": 0, "shape": None})
    if not state.path.is_file():
        state.save()  # from now on the outputs are ours, even if this run fails before its first checkpoint

    written_now = 0
    if state.finished:
        damaged = [str(p) for n, p in paths.items() if not p.is_file() or p.stat().st_size != state.outputs[n]["bytes"]]
        if damaged:
            raise ValueError(f"{task}: {', '.join(damaged)} changed since the conversion finished; pass --overwrite")
    else:
        converter.counters.update(state.counters)
        written_now = _convert_items(converter, out, paths, state, skip_missing, limit, progress, checkpoint_every)
    info_path = write_dataset_info(out, {name: dataset_info_entry(name, outputs[name]) for name in outputs})
    return {
        "task": task,
        "outputs": {name: str(path) for name, path in paths.items()},
        "records": {name: state.outputs[name]["records"] for name in outputs},
        "written": sum(state.outputs[name]["records"] for name in outputs),
        "written_this_run": written_now,
        "skipped": state.skipped,
        "consumed": state.consumed,
        "finished": state.finished,
        "resumed": resumed,
        "dataset_info": str(info_path),
        "state": str(state_path),
        **state.counters,
    }


def _convert_items(converter: Converter, out: Path, paths: dict[str, Path], state: _State, skip_missing: bool,
                   limit: int | None, progress: bool, checkpoint_every: int) -> int:  # fmt: skip
    """The conversion loop from the last checkpoint; returns the records written by this run."""
    files = {}
    for name, path in paths.items():
        size = path.stat().st_size if path.exists() else 0
        if size < state.outputs[name]["bytes"]:
            raise ValueError(f"{converter.task}: {path} is shorter than its last checkpoint; pass --overwrite")
        with open(path, "ab") as f:
            f.truncate(state.outputs[name]["bytes"])  # drop lines written after the last checkpoint
    written = since_checkpoint = 0
    last_save = time.monotonic()

    def checkpoint() -> None:
        for name, f in files.items():
            f.flush()
            os.fsync(f.fileno())
            state.outputs[name]["bytes"] = f.tell()
        state.counters = dict(converter.counters)
        state.save()

    bar = tqdm(total=converter.total(), desc=f"convert {converter.task}", unit="item", disable=not progress,
               initial=0, dynamic_ncols=True)  # fmt: skip
    try:
        for name, path in paths.items():
            files[name] = open(path, "ab")
        for index, item in enumerate(converter.items()):
            bar.update(1)
            if index < state.consumed:
                continue
            try:
                records = converter.records(item, out)
            except MissingMedia:
                if not skip_missing:
                    raise
                records = []
                state.skipped += 1
            except ConvertError:
                raise
            except (KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as err:
                raise ConvertError(converter.task, item.file, item.key, f"malformed record ({type(err).__name__}: {err})") from err
            for name, record in records:
                check_record(converter.task, item.file, item.key, record)
                slot = state.outputs[name]
                shape = _shape(record)
                if slot["shape"] is None:
                    slot["shape"] = shape
                elif slot["shape"] != shape:
                    raise ConvertError(converter.task, item.file, item.key,
                                       f"record keys {shape} differ from the file's {slot['shape']} (converter bug)")  # fmt: skip
                files[name].write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                slot["records"] += 1
                written += 1
            state.consumed = index + 1
            since_checkpoint += 1
            if limit is not None and written >= limit:
                break
            if since_checkpoint >= checkpoint_every or time.monotonic() - last_save > 10:
                checkpoint()
                since_checkpoint, last_save = 0, time.monotonic()
        else:
            state.finished = True
        checkpoint()
    finally:
        bar.close()
        for f in files.values():
            f.close()
    return written
