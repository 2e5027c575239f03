"""``lf-ext bench budget``: the token budget's visual tokens, TTFT and accuracy per alpha and method.

For each ``alpha``, four selections of the stock template's units (:mod:`lf_ext.selection`): entropy
``budget`` (round(alpha x units), highest entropy first), ``v2`` (entropy >= alpha x the image's max;
its own count) and, at the budget's count, ``random`` and ``uniform`` (grid subsampling).

- **TTFT**: one model (random weights of ``shape``, default the 2b shape, bf16) on one scene image of
  ``px`` pixels, the stock layout against each selection's plain layout, same run, medians of
  ``runs`` after ``warmup``; budget/random/uniform keep the same count, so they share one timing row;
- **accuracy** (``--accuracy``): the ``bench accuracy`` adaptation's base model (trained once with the
  stock template on the scenes), then for every (method, alpha) the same extra budget of steps with the
  selection on, and exact match on the test split with it on. The same base and extra steps with no
  selection give the stock row (alpha 1.0 of every method is stock).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lf_ext.bench.report import machine_info, print_table, save_figure, write_json
from lf_ext.bench.ttft import TIMING_SHAPES, Loaded, checkpoint, load, plain_ttft, stock_ttft
from lf_ext.layout import ImageLayout
from lf_ext.selection import PatchSelection

ALPHAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
METHODS = ("budget", "v2", "random", "uniform")
QUESTION = "What is the object in the picture?"


def scene_image(px: int, seed: int = 0):
    """One image of the synthetic scenes (a desk with objects) at ``px`` x ``px``."""
    import tempfile

    from PIL import Image

    from lf_ext.scenes import generate_scenes

    with tempfile.TemporaryDirectory() as scratch:
        generate_scenes(scratch, num_backgrounds=2, images_per_background=2, image_size=(px, px), seed=seed, progress=False)
        path = sorted(Path(scratch, "images", "train").glob("desk_*.png"))[0]
        return Image.open(path).convert("RGB")


def selected(loaded: Loaded, request: dict, selection: PatchSelection) -> tuple[torch.Tensor, ImageLayout]:
    """The stock request's prompt and plain layout with ``selection`` applied."""
    family = loaded.family
    (grid,) = family.unit_grids(request, loaded.processor)
    layout = ImageLayout((tuple(grid),), torch.zeros(int(np.prod(grid)), dtype=torch.int8), separated=False)
    units = family.pixel_units(loaded.processor.image_processor).units(request["pixel_values"], layout, 0)
    layout = selection.apply(layout, 0, units)
    image = family.image_token_id(loaded.model.config)
    row = request["inputs"][0]
    at = (row == image).nonzero().reshape(-1)
    ids = torch.cat([row[: at[0]], torch.full((layout.n_tokens(0),), image, dtype=row.dtype), row[at[-1] + 1 :]]).unsqueeze(0)
    return ids, layout


def measure_ttft(loaded: Loaded, image, alphas, runs: int, warmup: int) -> list[dict]:
    from lf_ext.eval.prompts import encode_request

    request = encode_request(loaded.stock_template, loaded.tokenizer, loaded.processor, QUESTION, [image])
    variants = {(m, a): selected(loaded, request, PatchSelection(m, a)) for a in alphas for m in ("budget", "v2")}
    samples: dict[Any, list[float]] = {"stock": []}
    for round_ in range(warmup + runs):
        stock = stock_ttft(loaded, request)["total"]
        line = [f"stock {stock:.0f}"]
        timed = {}
        for key, (ids, layout) in variants.items():
            timed[key] = plain_ttft(loaded, ids, request["pixel_values"], layout)["total"]
            line.append(f"{key[0]} {key[1]}: {timed[key]:.0f}")
        print(f"    round {round_ + 1}/{warmup + runs}{'' if round_ >= warmup else ' (warm-up)'}: " + ", ".join(line) + " ms", flush=True)
        if round_ >= warmup:
            samples["stock"].append(stock)
            for key, value in timed.items():
                samples.setdefault(key, []).append(value)
    stock_ms = statistics.median(samples["stock"])
    units = int(request["inputs"].eq(loaded.family.image_token_id(loaded.model.config)).sum())
    rows = []
    for alpha in alphas:
        for method in ("budget", "v2"):
            ms = statistics.median(samples[(method, alpha)])
            rows.append({"alpha": alpha, "method": method if method == "v2" else "budget/random/uniform",
                         "tokens": variants[(method, alpha)][1].n_tokens(0), "units": units, "ttft_ms": ms,
                         "stock_ms": stock_ms, "speedup": stock_ms / ms})  # fmt: skip
    return rows


def measure_accuracy(dataset_dir: Path, train: str, test: str, work: Path, alphas, methods, base_steps: int, extra_steps: int,
                     image_max_pixels: int) -> list[dict]:  # fmt: skip
    """Exact match per (method, alpha) after the same extra steps from one base (:mod:`lf_ext.bench.variants`),
    each row with its 95 % Wilson interval and, paired on the same questions, its difference to stock and
    (entropy methods) to random selection at the same alpha: bootstrap interval and McNemar p."""
    from lf_ext.bench.variants import variant_outcomes

    chosen = [(m, a) for m in methods for a in alphas if not (a >= 1.0 and m in ("budget", "random", "uniform"))]  # alpha 1: stock
    variants = {"stock": {}, **{f"{m}_{a}": dict(bgobj_patch_selection=m, bgobj_patch_alpha=a) for m, a in chosen}}
    outcomes, majority = variant_outcomes(dataset_dir, train, test, work, variants, base_steps, extra_steps,
                                          dict(image_max_pixels=image_max_pixels))  # fmt: skip
    return accuracy_rows({("stock", 1.0): outcomes["stock"], **{(m, a): outcomes[f"{m}_{a}"] for m, a in chosen}}, majority)


def accuracy_rows(outcomes: dict[tuple[str, float], list[bool]], majority: float) -> list[dict]:
    """One row per (method, alpha): accuracy, n, 95 % interval, and paired comparisons against stock and
    (for the entropy methods) against random selection at the same alpha."""
    from lf_ext.eval.stats import accuracy_row, paired_difference

    stock = outcomes[("stock", 1.0)]
    rows = []
    for (method, alpha), correct in outcomes.items():
        row = {"method": method, "alpha": alpha, **accuracy_row(correct)}
        if method == "stock":
            row["majority_baseline"] = majority
        else:
            row["vs_stock"] = paired_difference(correct, stock)
            if method in ("budget", "v2") and ("random", alpha) in outcomes:
                row["vs_random"] = paired_difference(correct, outcomes[("random", alpha)])
        rows.append(row)
    return rows


def print_accuracy(rows: list[dict]) -> None:
    """The accuracy table: interval, and the paired differences to stock and to random."""
    from lf_ext.bench.variants import signed

    majority = next(r["majority_baseline"] for r in rows if r["method"] == "stock")
    print(f"\nexact match on {rows[0]['n']} test questions after the same extra steps with the selection on "
          f"(stock: none; majority-answer baseline {majority:.1%})")  # fmt: skip
    table = [{**r, "ci": f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]", "minus_stock": signed(r.get("vs_stock")),
              "minus_random": signed(r.get("vs_random"))} for r in rows]  # fmt: skip
    print_table(table, [("method", "{}"), ("alpha", "{}"), ("accuracy", "{:.1%}"), ("ci", "{}"), ("minus_stock", "{}"),
                        ("minus_random", "{}")])  # fmt: skip


def run_bench_budget(json_out: str | Path, plot: str | Path | None = None, shape: str = "2b", px: int = 896,
                     alphas=ALPHAS, runs: int = 3, warmup: int = 1, checkpoints: str | Path = "work/bench/checkpoints",
                     accuracy: bool = False, dataset_dir: str | Path | None = None, train: str = "scenes_train",
                     test: str = "scenes_test", workdir: str | Path = "work/bench/budget", methods=METHODS,
                     base_steps: int | None = None, extra_steps: int | None = None, image_max_pixels: int = 50176,
                     ttft_from: str | Path | None = None) -> dict:  # fmt: skip
    """TTFT rows (and accuracy rows), printed and written as JSON (and a plot). ``ttft_from``: take the
    TTFT rows (and their run's machine record) from an earlier JSON of this bench instead of timing again,
    e.g. to train the accuracy half while the machine is busy without spoiling timings."""
    from lf_ext.adaptation import BASE_STEPS, EXTRA_STEPS

    torch.manual_seed(0)
    started = time.perf_counter()
    dtype = "bfloat16" if shape in TIMING_SHAPES else "float32"
    timed_on = None
    if ttft_from is not None:
        earlier = json.loads(Path(ttft_from).read_text())
        if earlier.get("benchmark") != "budget" or not earlier.get("ttft"):
            raise ValueError(f"--ttft-from {ttft_from}: not a `lf-ext bench budget` JSON with TTFT rows")
        shape, px, runs, ttft = earlier["shape"], earlier["image_px"], earlier["runs"], earlier["ttft"]
        timed_on = {"from": str(ttft_from), "machine": earlier.get("machine")}
    else:
        loaded = load(checkpoint(shape, checkpoints), px, dtype)
        ttft = measure_ttft(loaded, scene_image(px), alphas, runs, warmup)
        del loaded
    print(f"\nTTFT, {shape} shape ({dtype}), one {px}x{px} scene image, medians of {runs} runs"
          + (f" (from {ttft_from})" if timed_on else f" after {warmup} warm-up"))  # fmt: skip
    print_table(ttft, [("alpha", "{}"), ("method", "{}"), ("tokens", "{}"), ("units", "{}"), ("ttft_ms", "{:.0f}"),
                       ("stock_ms", "{:.0f}"), ("speedup", "{:.2f}")])  # fmt: skip
    acc_rows = []
    if accuracy:
        if dataset_dir is None:
            raise ValueError("--accuracy needs --dataset-dir (a scenes folder with the train and test splits)")
        work = Path(workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        acc_rows = measure_accuracy(Path(dataset_dir).resolve(), train, test, work, alphas, methods, base_steps or BASE_STEPS,
                                    extra_steps or EXTRA_STEPS, image_max_pixels)  # fmt: skip
        print_accuracy(acc_rows)
    payload = {"benchmark": "budget", "machine": machine_info(), "shape": shape, "image_px": px, "runs": runs,
               "ttft": ttft, "ttft_timed_on": timed_on, "accuracy": acc_rows, "seconds": time.perf_counter() - started}  # fmt: skip
    write_json(json_out, payload)
    if plot:
        plot_budget(payload, plot)
    return payload


def plot_budget(payload: dict, path: str | Path) -> None:
    """TTFT against the visual tokens kept (each point labelled with its alpha; stock at all units);
    accuracy against alpha per method (when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if payload["accuracy"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    for method in ("budget/random/uniform", "v2"):
        rows = sorted((r for r in payload["ttft"] if r["method"] == method), key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in rows], [r["ttft_ms"] / 1000 for r in rows], "o-", label=method)
        for r in rows:
            ax.annotate(f"{r['alpha']:g}", (r["tokens"], r["ttft_ms"] / 1000), textcoords="offset points", xytext=(3, 3), fontsize=7)
    units = payload["ttft"][0]["units"]
    ax.plot([units], [payload["ttft"][0]["stock_ms"] / 1000], "k*", markersize=10, label="stock")
    ax.set_xlabel("visual tokens (labels: alpha)")
    ax.set_ylabel("time to first token (s)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{payload['shape']}, {payload['image_px']} px")
    ax.grid(alpha=0.3)
    ax.legend()
    if payload["accuracy"]:
        ax = axes[0][1]
        stock = next(r for r in payload["accuracy"] if r["method"] == "stock")
        for method in sorted({r["method"] for r in payload["accuracy"]} - {"stock"}):
            rows = sorted((r for r in payload["accuracy"] if r["method"] == method), key=lambda r: r["alpha"])
            ax.plot([r["alpha"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label=method)
        ax.axhline(100 * stock["accuracy"], color="k", linestyle=":", label="stock")
        ax.fill_between([0, 1], 100 * stock["ci_low"], 100 * stock["ci_high"], color="k", alpha=0.07, label="stock 95% CI")
        ax.axhline(100 * stock["majority_baseline"], color="grey", linestyle="--", label="majority answer")
        ax.set_title(f"exact match, n={stock['n']}")
        ax.set_xlabel("alpha")
        ax.set_ylabel("exact match (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path, dpi=110)
