"""``lf-ext bench ttft``: time to first token for the stock layout, a bgobj miss and a bgobj hit.

One model instance serves all three (random weights of a family's shape, e.g. Qwen2-VL ``2b`` or
LLaVA-1.5 ``7b``, loaded through LLaMA-Factory's loader with the family's bgobj template, the
stock layout built by its stock template): the stock layout runs the stock vision tower over all
patches and prefills every token; a miss masks the image (reference provider against the empty
background plate), encodes both groups, prefills the prefix and inserts it, then prefills the rest;
a hit looks up and verifies the background, encodes the object units only and prefills the tokens
after ``[BG_END]`` on the cached KV. Every TTFT ends with the first token's logits. The image
processor's work is the same for all three and is not included.

The *limit* (DESIGN §8) is the unavoidable work of a hit, measured in the same run: the vision tower
on the object units plus the prefill after the cached prefix. ``limit_speedup = stock / limit``;
``hit_vs_limit = hit_speedup / limit_speedup`` (1.0 = no overhead). ``token_ratio`` (all prompt tokens
over the tokens a hit prefills) is the rough guide the issue calls the token-count limit.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig

from lf_ext.bench.report import machine_info, print_table, save_figure, write_json
from lf_ext.eval.prompts import encode_request
from lf_ext.layout import LAYOUT_KEY, ImageLayout, find_spans, respan
from lf_ext.models.attach import scatter_features

FRACTIONS = (0.05, 0.10, 0.20, 0.40, 0.60)
SIZES = (448, 896)
SHAPES = ("tiny", "small", "2b", "7b")
QUESTION = "What is the object in the picture?"
UNIT = 28  # Qwen2-VL's unit; frames take the family's
TIMING_SHAPES = ("2b", "7b")  # built in bf16


# --------------------------------------------------------------------------- inputs
def background_plate(px: int, rng: np.random.Generator) -> np.ndarray:
    """A textured (px, px, 3) uint8 background: smooth colour waves plus noise."""
    y, x = np.mgrid[0:px, 0:px] / px
    base = np.stack([128 + 90 * np.sin(6 * x + 2 * y), 128 + 90 * np.cos(5 * y), 128 + 60 * np.sin(4 * (x + y))], -1)
    return np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)


def scene_frames(px: int, fraction: float, seed: int = 0, unit: int = UNIT) -> dict[str, Any]:
    """A textured background plate and two frames with different objects on a unit-aligned rectangle
    covering about ``fraction`` of the units (the 'same camera, new object' case)."""
    rng = np.random.default_rng(seed)
    units = px // unit
    plate = background_plate(px, rng)
    side = max(1, round(units * fraction**0.5))
    rows, cols = side, min(units, max(1, round(fraction * units * units / side)))
    top, left = (units - rows) // 2, (units - cols) // 2
    frames = []
    for _ in range(2):
        frame = plate.copy()
        frame[top * unit : (top + rows) * unit, left * unit : (left + cols) * unit] = rng.integers(
            0, 256, (rows * unit, cols * unit, 3), dtype=np.uint8)  # fmt: skip
        frames.append(Image.fromarray(frame))
    return {"plate": Image.fromarray(plate), "frames": frames, "object_fraction": rows * cols / units**2}


def checkpoint(shape: str, root: str | Path, arch: str = "qwen2_vl") -> Path:
    """A random checkpoint of ``arch`` and ``shape`` under ``root`` (built once, offline)."""
    from lf_ext.tiny.checkpoint import build_checkpoint

    out = Path(root) / f"{arch}-{shape}"
    if not (out / "config.json").is_file():
        print(f"building a random {shape} {arch} checkpoint in {out} (once) ...", flush=True)
        build_checkpoint(arch, out, seed=0, shape=shape)
    return out


@dataclass
class Loaded:
    """A bgobj model loaded like ``llamafactory-cli chat`` loads it, with its family and templates."""

    model: Any
    family: Any
    tokenizer: Any
    processor: Any
    stock_template: Any  # LLaMA-Factory's stock template of the family
    bgobj_template: Any  # its bgobj template (mask provider 'none': callers set the split)

    def stock_request(self, image: Image.Image) -> dict:
        return encode_request(self.stock_template, self.tokenizer, self.processor, QUESTION, [image])

    def bgobj_request(self, image: Image.Image, labels: np.ndarray) -> dict:
        """The bgobj prompt and inputs of ``image`` split by ``labels`` (rows, cols) bool."""
        request = encode_request(self.bgobj_template, self.tokenizer, self.processor, QUESTION, [image])
        layout = ImageLayout.unpack(request[LAYOUT_KEY]).with_item(0, torch.from_numpy(labels.reshape(-1)).to(torch.int8))
        tokens = self.family.separator_tokens(self.model)
        (span,) = find_spans(request["inputs"][0].tolist(), tokens)
        request["inputs"] = respan(request["inputs"], span, layout.n_background(0), layout.n_object(0), tokens)
        return dict(request, **{LAYOUT_KEY: layout})

    def reuse(self, cache_bytes: int = 8 << 30, refine: bool = True, policy: str = "reuse"):
        from lf_ext.cache import BackgroundCache
        from lf_ext.cache.policy import VerificationPolicy
        from lf_ext.inference.reuse import BackgroundReuse

        pixels = self.family.pixel_units(self.processor.image_processor)
        cache = BackgroundCache(cache_bytes, policy=VerificationPolicy(mode=policy))
        return BackgroundReuse(self.model, self.family, cache, pixels, refine=refine)


def load(model_dir: Path, image_px: int, dtype: str, **extra: Any) -> Loaded:
    """Tokenizer, processor, templates and bgobj model exactly as ``llamafactory-cli chat`` loads them
    (``extra``: more LLaMA-Factory/bgobj arguments, e.g. the video keys)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    from lf_ext.families import family_of

    family = family_of(AutoConfig.from_pretrained(model_dir))
    extra.setdefault("template", family.template)  # the stock template with video options: the plain layout
    args = dict(model_name_or_path=str(model_dir), infer_dtype=dtype, image_max_pixels=image_px * image_px, bgobj_cache=False,
                **extra)  # fmt: skip
    model_args, data_args, finetuning_args, _ = get_infer_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    bgobj_template = get_template_and_fix_tokenizer(tokenizer, data_args)
    model = load_model(tokenizer, model_args, finetuning_args, is_trainable=False)
    stock_template = get_template_and_fix_tokenizer(tokenizer, replace(data_args, template=family.stock_template))
    return Loaded(model, family, tokenizer, tokenizer_module["processor"], stock_template, bgobj_template)


# --------------------------------------------------------------------------- the three paths
@torch.inference_mode()
def timed_first_token(loaded: Loaded, ids: torch.Tensor, encode, token_id: int, positions) -> dict[str, float]:
    """Time ``encode()`` (the vision tower), then the prefill of ``ids`` with its features at ``token_id`` and
    ``positions()``, to the first token's logits: total, vision and prefill milliseconds."""
    model = loaded.model
    start = time.perf_counter()
    features = encode()
    vision = time.perf_counter()
    embeds = scatter_features(model.get_input_embeddings()(ids), ids, features, token_id)
    hidden = loaded.family.language_model(model)(inputs_embeds=embeds, position_ids=positions(), use_cache=True).last_hidden_state
    model.lm_head(hidden[:, -1]).float()
    end = time.perf_counter()
    return {"total": (end - start) * 1000, "vision": (vision - start) * 1000, "prefill": (end - vision) * 1000}


def stock_ttft(loaded: Loaded, request: dict) -> dict[str, float]:
    """The stock layout: full vision tower, prefill of every token, first-token logits."""
    model, family, ids = loaded.model, loaded.family, request["inputs"]
    return timed_first_token(loaded, ids, lambda: family.stock_features(model, request), family.image_token_id(model.config),
                             lambda: family.stock_positions(model, ids, request))  # fmt: skip


def plain_ttft(loaded: Loaded, ids: torch.Tensor, pixel_values: torch.Tensor, layout: ImageLayout) -> dict[str, float]:
    """A plain layout (the stock template with some units dropped): the tower on the kept units, the prefill."""
    model, family = loaded.model, loaded.family
    return timed_first_token(loaded, ids, lambda: family.encode(model, pixel_values, layout), family.image_token_id(model.config),
                             lambda: family.positions(model, ids, layout))  # fmt: skip


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def measure_row(loaded: Loaded, shape: str, px: int, fraction: float, runs: int, warmup: int,
                stock_samples: list[float] | None = None) -> dict:  # fmt: skip
    """Stock, miss and hit TTFT (medians over ``runs``, after ``warmup`` unrecorded rounds) for one row.

    ``stock_samples``: stock TTFTs already measured for this model and image size in this process
    (the stock layout's work does not depend on where the object is), reused instead of re-measured."""
    from lf_ext.config import parse_bgobj_args
    from lf_ext.masks.pipeline import ObjectMasker
    from lf_ext.masks.reference import ReferenceMaskProvider

    scene = scene_frames(px, fraction, unit=loaded.family.pixel_units(loaded.processor.image_processor).unit)
    threshold = parse_bgobj_args({}).bgobj_reference_threshold  # the key's default
    masker = ObjectMasker(ReferenceMaskProvider(scene["plate"], threshold), "reference")
    geometry = loaded.family.token_grid(px, px, loaded.processor)
    stock_request = loaded.stock_request(scene["frames"][1])
    units = geometry.num_units
    reuse = loaded.reuse()
    samples: dict[str, list] = {k: [] for k in ("stock", "miss", "hit", "mask", "limit")}
    parts: dict[str, list] = {}
    for round_ in range(warmup + runs):
        record = round_ >= warmup
        reuse.cache.clear()
        stock = stock_ttft(loaded, stock_request) if stock_samples is None else None
        outcomes = []
        for frame in scene["frames"]:  # frame 0: miss (inserts), frame 1: hit
            start = time.perf_counter()
            labels = masker.labels(frame, geometry)
            mask_ms = (time.perf_counter() - start) * 1000
            request = loaded.bgobj_request(frame, labels)
            result = reuse.prefill(request["inputs"], request["pixel_values"], request[LAYOUT_KEY])
            outcomes.append((result.outcome, mask_ms))
        (miss, miss_mask_ms), (hit, _) = outcomes
        if miss.kind != "miss" or hit.kind != "hit":
            raise RuntimeError(f"expected a miss then a hit, got {miss.kind} then {hit.kind}")
        stock_text = f"stock {stock['total']:.0f} ms, " if stock else ""
        print(f"    round {round_ + 1}/{warmup + runs}{'' if record else ' (warm-up)'}: {stock_text}"
              f"miss {miss_mask_ms + miss.ms['total']:.0f} ms, hit {hit.ms['total']:.0f} ms", flush=True)  # fmt: skip
        if not record:
            continue
        if stock:
            samples["stock"].append(stock["total"])
        samples["miss"].append(miss_mask_ms + miss.ms["total"])
        samples["mask"].append(miss_mask_ms)
        samples["hit"].append(hit.ms["total"])  # a hit needs no mask: the entry's background set decides the layout
        samples["limit"].append(hit.ms["vision"] + hit.ms["prefill"])
        for name, ms in (("stock", stock or {}), ("miss", miss.ms), ("hit", hit.ms)):
            for part, value in ms.items():
                parts.setdefault(f"{name}_{part}_ms", []).append(value)
    if stock_samples is not None:
        samples["stock"] = list(stock_samples)
    total_tokens = stock_request["inputs"].shape[1]
    (hit_span,) = find_spans(request["inputs"][0].tolist(), loaded.family.separator_tokens(loaded.model))
    suffix_tokens = request["inputs"].shape[1] - hit_span.prefix_end  # what a hit prefills: after [BG_END]
    stock_ms, miss_ms, hit_ms, limit_ms = (_median(samples[k]) for k in ("stock", "miss", "hit", "limit"))
    return {
        "arch": loaded.family.name, "shape": shape, "image_px": px, "object_fraction": round(scene["object_fraction"], 4),
        "target_fraction": fraction, "units": units, "object_units": hit.object_units, "prompt_tokens": total_tokens,
        "hit_prefill_tokens": suffix_tokens, "runs": runs,
        "stock_ms": stock_ms, "miss_ms": miss_ms, "hit_ms": hit_ms, "limit_ms": limit_ms, "mask_ms": _median(samples["mask"]),
        "hit_speedup": stock_ms / hit_ms, "limit_speedup": stock_ms / limit_ms,
        "hit_vs_limit": (stock_ms / hit_ms) / (stock_ms / limit_ms), "miss_overhead": miss_ms / stock_ms - 1,
        "token_ratio": total_tokens / suffix_tokens, "stock_reused": stock_samples is not None,
        "components_ms": {name: _median(values) for name, values in sorted(parts.items())},
        "samples_ms": samples,
    }  # fmt: skip


# --------------------------------------------------------------------------- driver
COLUMNS = [("shape", "{}"), ("image_px", "{}"), ("object_fraction", "{:.2f}"), ("prompt_tokens", "{}"),
           ("stock_ms", "{:.0f}"), ("miss_ms", "{:.0f}"), ("hit_ms", "{:.0f}"), ("limit_ms", "{:.0f}"),
           ("hit_speedup", "{:.2f}"), ("limit_speedup", "{:.2f}"), ("hit_vs_limit", "{:.2f}"),
           ("miss_overhead", "{:+.1%}"), ("token_ratio", "{:.1f}")]  # fmt: skip


def run_bench_ttft(json_out: str | Path, plot: str | Path | None = None, quick: bool = False,
                   shapes: tuple[str, ...] = SHAPES, sizes: tuple[int, ...] = SIZES,
                   fractions: tuple[float, ...] = FRACTIONS, runs: int = 5, warmup: int = 1,
                   checkpoints: str | Path = "work/bench/checkpoints", reuse_stock: bool = False,
                   arch: str = "qwen2_vl") -> list[dict]:  # fmt: skip
    """Measure every (shape, size, fraction) row, print the table, write JSON (and the plot).

    ``reuse_stock``: measure the stock TTFT with the first fraction of each (shape, size) only and
    reuse those samples for the other fractions (its work does not depend on the object; saves
    about half the time of a full run on the 2b shape)."""
    if quick:  # the acceptance row; no warm-up round (the median of 5 absorbs the first run's one-time costs)
        shapes, sizes, fractions, warmup = ("2b",), (896,), (0.20,), 0
    torch.manual_seed(0)
    rows = []
    for shape in shapes:
        model_dir = checkpoint(shape, checkpoints, arch)
        dtype = "bfloat16" if shape in TIMING_SHAPES else "float32"
        for px in sizes:
            loaded = load(model_dir, px, dtype)
            stock_samples = None
            for fraction in fractions:
                started = time.perf_counter()
                row = measure_row(loaded, shape, px, fraction, runs, warmup,
                                  stock_samples if reuse_stock else None)  # fmt: skip
                stock_samples = row["samples_ms"]["stock"]
                row["dtype"] = dtype
                rows.append(row)
                print(f"  {shape} {px}px {fraction:.0%}: stock {row['stock_ms']:.0f} ms, miss {row['miss_ms']:.0f} ms, "
                      f"hit {row['hit_ms']:.0f} ms ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
            del loaded
    print("\nTTFT (ms, median of %d runs after %d warm-up; same process, interleaved stock/miss/hit)" % (runs, warmup))
    print_table(rows, COLUMNS)
    write_json(json_out, {"benchmark": "ttft", "machine": machine_info(), "quick": quick, "rows": rows})
    if plot:
        plot_ttft(rows, plot)
    return rows


def plot_ttft(rows: list[dict], path: str | Path) -> None:
    """TTFT against object fraction, one panel per (shape, image size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["shape"], r["image_px"]) for r in rows}, key=lambda k: (SHAPES.index(k[0]), k[1]))  # one arch per plot
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (shape, px) in zip(axes[0], panels):
        chosen = sorted((r for r in rows if (r["shape"], r["image_px"]) == (shape, px)), key=lambda r: r["object_fraction"])
        x = [100 * r["object_fraction"] for r in chosen]
        for key, label, style in (("stock_ms", "stock", "o-"), ("miss_ms", "bgobj miss", "s--"),
                                  ("hit_ms", "bgobj hit", "^-"), ("limit_ms", "hit limit", ":")):  # fmt: skip
            ax.plot(x, [r[key] / 1000 for r in chosen], style, label=label)
        ax.set_title(f"{chosen[0]['arch']} {shape}, {px} px")
        ax.set_xlabel("object units (%)")
        ax.set_ylabel("time to first token (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    save_figure(fig, path, dpi=110)
