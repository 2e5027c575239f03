"""The ``bgobj_*`` settings: declaration, strict parsing, and the resolved settings of one command.

LLaMA-Factory rejects unknown keys, so lf_ext takes every ``bgobj_*`` key out of the arguments
before LLaMA-Factory parses the rest (see ``lf_ext.patches.parser``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

KEY_PREFIX = "bgobj_"


def _mask_provider_names() -> list[str]:
    from lf_ext.masks.registry import mask_provider_names

    return mask_provider_names()


def _key(default, help: str, choices=None):
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class BgObjArguments:
    """Settings of the background/object extension. Every field is a ``bgobj_*`` YAML/CLI key."""

    # masks: which provider, and how its mask becomes one label per token unit
    bgobj_mask_provider: str = _key("none", "Mask provider that splits each image into background and object; "
                                    "'none' keeps every visual token in the background group.", _mask_provider_names)
    bgobj_mask_fallback: str = _key("auto", "What to do when the provider has no mask for an image (dataset masks "
                                    "missing, an upload in chat): another provider's name, 'error', or 'auto': 'none' "
                                    "when training, 'entropy' in chat/api/webchat/LlamaBoard's chat.",
                                    lambda: _mask_provider_names() + ["error", "auto"])
    bgobj_mask_margin: int = _key(0, "Grow the object region by this many pixels (at the processor's geometry).")
    bgobj_unit_coverage: float = _key(0.0, "A token unit is object when more than this fraction of its pixels "
                                      "are object (0: any object pixel).")
    bgobj_mask_dir: str = _key("", "Folder of masks written by `lf-ext masks precompute` for the 'dataset' provider "
                               "(default: read masks/boxes/polygons from the dataset files).")
    # entropy provider
    bgobj_entropy_alpha: float = _key(0.25, "entropy: fraction of token units with the highest entropy taken as object.")
    bgobj_entropy_threshold: float = _key(0.0, "entropy: if > 0, units above this entropy (bits) are object "
                                          "instead of the top alpha fraction.")
    # reference provider
    bgobj_reference_image: str = _key("", "reference: the background plate image (a record's 'plate' wins); for "
                                      "video clips also 'median': the clip's own per-pixel temporal median.")
    bgobj_reference_threshold: float = _key(12.0, "reference: mean absolute RGB difference (0-255) above which "
                                            "a pixel is object.")
    # yolo provider
    bgobj_yolo_weights: str = _key("", "yolo: local path of an ultralytics segmentation or detection checkpoint.")
    bgobj_yolo_classes: str = _key("", "yolo: comma-separated class ids to keep (empty: all).")
    bgobj_yolo_conf: float = _key(0.25, "yolo: confidence threshold.")
    bgobj_yolo_mode: str = _key("union", "yolo: 'union' of all detections or the single most confident ('top1').",
                                ["union", "top1"])

    # token budget (entropy patch selection, lf_ext.selection)
    bgobj_patch_selection: str = _key("none", "Token budget: keep only some token units, by grey-level entropy, inside each "
                                      "group: 'budget' (top alpha fraction), 'v2' (entropy >= alpha x the group's max), "
                                      "'v1' (fixed thresholds: flat blocks keep one unit); 'none' = every unit; baselines at "
                                      "the budget's count: 'random', 'uniform' (grid subsampling).",
                                      ["none", "v1", "v2", "budget", "random", "uniform"])
    bgobj_patch_alpha: float = _key(0.3, "Token budget: alpha of 'budget' (fraction kept) and 'v2' (threshold factor), in (0, 1].")
    bgobj_patch_thresholds: str = _key("3,2", "Token budget 'v1': entropy thresholds (bits) of 2x2- and 4x4-unit blocks, "
                                       "comma-separated (two numbers).")

    # video training options (lf_ext.pooling, lf_ext.plugins.clip_streams); the stock templates (qwen2_vl) so far
    bgobj_video_scales: str = _key("1.0", "Video: each clip also enters at these smaller scales of its merged token grid "
                                   "(bilinear resampling after the merger), as extra visual tokens with their own M-RoPE "
                                   "grid, e.g. [1.0, 0.75, 0.5] or '1.0,0.75,0.5'; values in (0, 1]; '1.0' = off.")
    bgobj_video_fast_slow: bool = _key(False, "Video: replace each clip by a slow stream (every slow_stride-th temporal "
                                       "slice, at most num_slow, pooled by bgobj_video_pool_stride) and a fast stream "
                                       "(every fast_stride-th slice, at most num_fast, pooled twice as hard), LLaVA-NeXT's "
                                       "add_faster_video. A Qwen temporal slice is 2 frames.")
    bgobj_video_fast_stride: int = _key(1, "Video fast/slow: temporal slice stride of the fast stream.")
    bgobj_video_slow_stride: int = _key(4, "Video fast/slow: temporal slice stride of the slow stream.")
    bgobj_video_num_fast: int = _key(8, "Video fast/slow: at most this many slices in the fast stream.")
    bgobj_video_num_slow: int = _key(8, "Video fast/slow: at most this many slices in the slow stream.")
    bgobj_video_pool_stride: int = _key(1, "Video: pool each temporal slice's merged tokens on its (h, w) grid with this "
                                        "stride after the merger (LLaVA-NeXT get_2dPool); 1 = off. Stock Qwen2-VL / "
                                        "Qwen2.5-VL templates so far.")
    bgobj_video_pool_mode: str = _key("average", "Video: how bgobj_video_pool_stride pools: 'average', 'max' (over each "
                                      "stride x stride cell) or 'bilinear' (resampling to the pooled size).",
                                      ["average", "max", "bilinear"])

    # model
    bgobj_prefusion_layers: int = _key(0, "Causal prefusion layers before the LLM (copies of its first N layers, "
                                       "gated shut at start); 0 = off. Only when a checkpoint first gets bgobj.")
    bgobj_split_projector: bool = _key(False, "Separate background and object projectors (copies of the model's projector, "
                                       "trained in stage 1). Only when a checkpoint first gets bgobj.")

    # training for background reuse
    bgobj_sibling_prob: float = _key(0.0, "Training: probability that an image's background tokens come from a "
                                     "sibling image sharing its background (as a cache hit would serve them); 0 = off.")

    # background cache (inference: chat, api, webchat, lf_ext.inference)
    bgobj_cache: bool = _key(True, "Inference: reuse the background tokens and prefix KV of verified matching "
                             "backgrounds (single-image requests with a bgobj template).")
    bgobj_cache_max_mb: float = _key(2048.0, "Inference: memory bound of the background cache in MiB.")
    bgobj_cache_unit_threshold: float = _key(4.0, "Inference: a cached background is reused only if every one of its "
                                             "units is within this mean absolute pixel difference (0-255).")
    bgobj_cache_min_coverage: float = _key(0.3, "Inference: backgrounds covering less than this fraction of the "
                                           "image's units are not cached.")
    bgobj_cache_policy: str = _key("reuse", "Inference: which cached backgrounds may serve a request. 'reuse': any "
                                   "verified entry, the one whose split is closest to the request's own (answers may "
                                   "differ from cache-off); 'exact': only an entry with the request's own split "
                                   "(answers equal cache-off; no refinement).", ["reuse", "exact"])
    bgobj_cache_refine: bool = _key(True, "Inference ('reuse' policy): after a rejection, answer with and cache the "
                                    "request's own background minus the units that failed verification against the "
                                    "nearest entry (drops changing regions such as clocks).")
    bgobj_cache_dir: str = _key("", "Inference: folder of the optional disk tier (safetensors); empty = memory only.")
    bgobj_cache_disk_max_mb: float = _key(0.0, "Inference: bound of the disk tier in MiB; 0 = unbounded.")
    bgobj_cache_redis_url: str = _key("", "Inference: Redis URL of a background tier shared by replicas of the model "
                                      "(redis://host:port/db, rediss://..., unix:///path.sock); empty = off.")
    bgobj_cache_redis_max_mb: float = _key(1024.0, "Inference: bound of this model's entries in Redis in MiB (least "
                                           "recently used evicted first); 0 = unbounded.")
    bgobj_cache_redis_ttl_s: float = _key(0.0, "Inference: entries expire from Redis this many seconds after they were "
                                          "written; 0 = never.")
    bgobj_cache_redis_timeout_s: float = _key(0.25, "Inference: socket timeout of each Redis call in seconds; after an "
                                              "error Redis is skipped (requests served locally) and retried with back-off.")

    def __post_init__(self):
        _check_ranges(self)


def _check_ranges(s: "BgObjArguments") -> None:
    from pathlib import Path

    if s.bgobj_prefusion_layers < 0:
        raise BgObjConfigError(f"bgobj_prefusion_layers must be >= 0, got {s.bgobj_prefusion_layers}.")
    if not 0.0 <= s.bgobj_sibling_prob <= 1.0:
        raise BgObjConfigError(f"bgobj_sibling_prob must be in [0, 1], got {s.bgobj_sibling_prob}.")
    for name in ("bgobj_cache_max_mb", "bgobj_cache_unit_threshold", "bgobj_cache_disk_max_mb", "bgobj_cache_redis_max_mb",
                 "bgobj_cache_redis_ttl_s"):  # fmt: skip
        if getattr(s, name) < 0:
            raise BgObjConfigError(f"{name} must be >= 0, got {getattr(s, name)}.")
    if not s.bgobj_cache_redis_timeout_s > 0:
        raise BgObjConfigError(f"bgobj_cache_redis_timeout_s must be > 0, got {s.bgobj_cache_redis_timeout_s}.")
    problem = _redis_url_problem(s.bgobj_cache_redis_url) if s.bgobj_cache_redis_url else None
    if problem:
        raise BgObjConfigError(f"bgobj_cache_redis_url is not a Redis URL (redis://host:port/db, rediss://..., "
                               f"unix:///path.sock): {s.bgobj_cache_redis_url!r} ({problem}).")
    if not 0.0 <= s.bgobj_cache_min_coverage <= 1.0:
        raise BgObjConfigError(f"bgobj_cache_min_coverage must be in [0, 1], got {s.bgobj_cache_min_coverage}.")
    if not 0.0 < s.bgobj_patch_alpha <= 1.0:
        raise BgObjConfigError(f"bgobj_patch_alpha must be in (0, 1], got {s.bgobj_patch_alpha}.")
    thresholds = [t.strip() for t in s.bgobj_patch_thresholds.split(",")]
    if len(thresholds) != 2 or not all(_is_number(t) and float(t) >= 0 for t in thresholds):
        raise BgObjConfigError(f"bgobj_patch_thresholds must be two non-negative numbers (2x2 and 4x4 blocks), "
                               f"got {s.bgobj_patch_thresholds!r}.")
    try:
        scales = video_scales(s.bgobj_video_scales)
    except ValueError:
        scales = None
    if not scales or not all(0.0 < v <= 1.0 for v in scales):
        raise BgObjConfigError(f"bgobj_video_scales must be numbers in (0, 1] (e.g. 1.0,0.75,0.5), got {s.bgobj_video_scales!r}.")
    for name in ("bgobj_video_fast_stride", "bgobj_video_slow_stride", "bgobj_video_num_fast", "bgobj_video_num_slow"):
        if getattr(s, name) < 1:
            raise BgObjConfigError(f"{name} must be >= 1, got {getattr(s, name)}.")
    if video_options_on(s) and s.bgobj_patch_selection != "none":
        raise BgObjConfigError("the bgobj_video_* options and bgobj_patch_selection cannot be combined yet (a pooled or "
                               "resampled clip keeps every unit); set one of them.")
    if s.bgobj_video_pool_stride < 1:
        raise BgObjConfigError(f"bgobj_video_pool_stride must be >= 1 (1 = off), got {s.bgobj_video_pool_stride}.")
    if s.bgobj_mask_margin < 0:
        raise BgObjConfigError(f"bgobj_mask_margin must be >= 0, got {s.bgobj_mask_margin}.")
    if not 0.0 <= s.bgobj_unit_coverage < 1.0:
        raise BgObjConfigError(f"bgobj_unit_coverage must be in [0, 1), got {s.bgobj_unit_coverage}.")
    if not 0.0 < s.bgobj_entropy_alpha <= 1.0:
        raise BgObjConfigError(f"bgobj_entropy_alpha must be in (0, 1], got {s.bgobj_entropy_alpha}.")
    if not 0.0 <= s.bgobj_yolo_conf <= 1.0:
        raise BgObjConfigError(f"bgobj_yolo_conf must be in [0, 1], got {s.bgobj_yolo_conf}.")
    if s.bgobj_yolo_classes and not all(c.strip().isdigit() for c in s.bgobj_yolo_classes.split(",")):
        raise BgObjConfigError(f"bgobj_yolo_classes must be comma-separated integers, got {s.bgobj_yolo_classes!r}.")
    uses = {s.bgobj_mask_provider, s.bgobj_mask_fallback}
    if "yolo" in uses and not Path(s.bgobj_yolo_weights).is_file():
        raise BgObjConfigError(f"the yolo mask provider needs bgobj_yolo_weights, a local checkpoint file; "
                               f"not found: {s.bgobj_yolo_weights!r}.")
    if s.bgobj_reference_image not in ("", "median") and not Path(s.bgobj_reference_image).is_file():
        raise BgObjConfigError(f"bgobj_reference_image not found: {s.bgobj_reference_image!r}.")
    if s.bgobj_mask_dir and not Path(s.bgobj_mask_dir).is_dir():
        raise BgObjConfigError(f"bgobj_mask_dir not found: {s.bgobj_mask_dir!r}.")
    if s.bgobj_mask_fallback == s.bgobj_mask_provider and s.bgobj_mask_provider != "none":
        raise BgObjConfigError("bgobj_mask_fallback must differ from bgobj_mask_provider.")


def video_scales(text: str) -> list[float]:
    """The extra scales of ``bgobj_video_scales`` text ('1.0,0.75,0.5' or '[1.0, 0.75, 0.5]'), 1.0 included."""
    return [float(v) for v in text.strip().strip("[]").split(",") if v.strip()]


def video_options_on(keys: "BgObjArguments") -> bool:
    """Any ``bgobj_video_*`` token option set (pooling, extra scales, fast/slow)."""
    return (keys.bgobj_video_pool_stride > 1 or keys.bgobj_video_fast_slow
            or any(v != 1.0 for v in video_scales(keys.bgobj_video_scales)))  # fmt: skip


def _redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable Redis URL, or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError as err:
        return str(err)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"scheme {parts.scheme or '(none)'!r} is not redis, rediss or unix"
    if parts.scheme == "unix":
        return None if parts.path else "no socket path"
    db = parts.path.strip("/")
    if not parts.hostname or port == 0:
        return "no host" if not parts.hostname else "port 0"
    return f"database {db!r} is not a number" if db and not db.isdigit() else None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class BgObjConfigError(ValueError):
    """A ``bgobj_*`` key or value is invalid."""


def bgobj_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(BgObjArguments))


def valid_keys() -> list[str]:
    return [f.name for f in bgobj_fields()]


def _choices(f: dataclasses.Field) -> list[str] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn a CLI string into the field's type; leave typed YAML values alone but check them."""
    kind = type(f.default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise BgObjConfigError(f"{f.name} expects true or false, got {value!r}.")
        return value
    if kind in (int, float) and not isinstance(value, bool):
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            converted = None
        if converted is not None and (kind is float or float(value) == converted):
            return converted
        raise BgObjConfigError(f"{f.name} expects a{'n integer' if kind is int else ' number'}, got {value!r}.")
    if kind is str and isinstance(value, str):
        return value
    if kind is str and isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return ",".join(str(v) for v in value)  # a YAML list for a comma-separated key
    raise BgObjConfigError(f"{f.name} expects a {kind.__name__}, got {value!r}.")


def _unknown_key_error(key: str) -> BgObjConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return BgObjConfigError(f"Unknown lf_ext key '{key}'.{hint} Valid keys: {', '.join(keys)} (see `lf-ext config`).")


def parse_bgobj_args(values: dict[str, Any]) -> BgObjArguments:
    """Validate a mapping of ``bgobj_*`` keys strictly and return the settings."""
    by_name = {f.name: f for f in bgobj_fields()}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in by_name:
            raise _unknown_key_error(key)
        f = by_name[key]
        parsed[key] = _coerce(f, value)
        choices = _choices(f)
        if choices is not None and parsed[key] not in choices:
            raise BgObjConfigError(f"{key}={parsed[key]!r} is not one of: {', '.join(map(str, choices))}.")
    return BgObjArguments(**parsed)


def split_bgobj_args(args: dict[str, Any] | list[str]) -> tuple[dict[str, Any] | list[str], dict[str, Any]]:
    """Separate ``bgobj_*`` keys from a LLaMA-Factory argument dict or argv list (inputs untouched)."""
    if isinstance(args, dict):
        rest = {k: v for k, v in args.items() if not str(k).startswith(KEY_PREFIX)}
        return rest, {k: v for k, v in args.items() if str(k).startswith(KEY_PREFIX)}
    rest_list: list[str] = []
    found: dict[str, Any] = {}
    i = 0
    while i < len(args):
        item = args[i]
        if item.startswith("--" + KEY_PREFIX):
            key, eq, value = item[2:].partition("=")
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise BgObjConfigError(f"--{key} needs a value.")
                value = args[i + 1]
                i += 1
            found[key] = value
        else:
            rest_list.append(item)
        i += 1
    return rest_list, found


@dataclass(frozen=True)
class Settings:
    """The ``bgobj_*`` keys of one LLaMA-Factory command and the LLaMA-Factory arguments given beside
    them (``dataset``, ``dataset_dir``, ``seed``, ``do_train``...), resolved once when the command's
    arguments are parsed (:mod:`lf_ext.patches.parser`) and passed explicitly from there."""

    keys: BgObjArguments = field(default_factory=BgObjArguments)
    lf_args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        """Split a LLaMA-Factory argument dict (``bgobj_*`` keys included) and validate the keys."""
        rest, found = split_bgobj_args(dict(values))
        return cls(parse_bgobj_args(found), rest)

    def lf(self, key: str, default: Any = None) -> Any:
        return self.lf_args.get(key, default)

    @property
    def training(self) -> bool:
        """True when the command trains (``do_train``), e.g. not chat, api or export."""
        value = self.lf_args.get("do_train", False)
        return value.lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def check_video_data(settings: Settings) -> None:
    """Video options on a training command whose datasets declare no ``videos`` column: a clear error before
    any data is read (the options would silently do nothing)."""
    from lf_ext.eval.datasets import dataset_entry, dataset_names

    if not video_options_on(settings.keys) or not settings.training:
        return
    names = dataset_names(settings.lf_args)
    try:
        entries = {name: dataset_entry(settings.lf("dataset_dir", "data"), name) for name in names}
    except (OSError, ValueError):
        return  # LLaMA-Factory reports a missing dataset itself
    if entries and not any((entry.get("columns") or {}).get("videos") for entry in entries.values()):
        raise BgObjConfigError(f"the bgobj_video_* options are set, but no dataset of this run ({', '.join(entries)}) "
                               f"declares a 'videos' column in {settings.lf('dataset_dir', 'data')}/dataset_info.json")  # fmt: skip


SETTINGS_ATTR = "lf_ext_settings"


def attach_settings(parsed_args: Any, settings: Settings) -> None:
    """Give one of LLaMA-Factory's parsed argument objects (model, data, training... arguments) the
    settings of its command: they travel with those objects into ``load_model``, the template, the collator."""
    setattr(parsed_args, SETTINGS_ATTR, settings)


def settings_of(parsed_args: Any) -> Settings:
    """The settings attached to LLaMA-Factory arguments (defaults when they were built without the parser)."""
    found = getattr(parsed_args, SETTINGS_ATTR, None)
    return found if isinstance(found, Settings) else Settings()


def describe_keys() -> str:
    """A table of every key with its default and help, for ``lf-ext config``."""
    lines = []
    for f in bgobj_fields():
        choices = _choices(f)
        extra = f" (one of: {', '.join(choices)})" if choices else ""
        lines.append(f"{f.name}: {f.default!r}\n    {f.metadata['help']}{extra}")
    return "\n".join(lines)
