"""The ``lf-ext`` command line: ``config``, ``tiny``, ``scenes``, masks, benchmarks, ``webui`` and ``demo``."""

from __future__ import annotations

import argparse
import sys

from lf_ext.eval.metrics import GROUPS as METRIC_GROUPS  # stdlib only: cheap at start


def _cmd_config(args: argparse.Namespace) -> int:
    from lf_ext.config import describe_keys

    print("lf_ext keys (put them in a LLaMA-Factory YAML or pass them as key=value):\n")
    print(describe_keys())
    return 0


def _cmd_tiny(args: argparse.Namespace) -> int:
    from lf_ext.tiny.checkpoint import build_checkpoint

    out = build_checkpoint(args.arch, args.out, seed=args.seed, shape=args.shape)
    print(f"wrote {args.shape} {args.arch} checkpoint to {out}")
    return 0


def _cmd_scenes(args: argparse.Namespace) -> int:
    from lf_ext.scenes import generate_scenes

    if args.video:
        from lf_ext.scenes.video import generate_video_scenes

        summary = generate_video_scenes(args.out, num_cameras=args.backgrounds, clips_per_camera=args.images_per_background,
                                        frames=args.frames, image_size=(args.size, args.size), fps=args.fps, seed=args.seed)  # fmt: skip
        print(f"wrote video scenes to {args.out}: {summary}")
        return 0
    summary = generate_scenes(
        args.out,
        num_backgrounds=args.backgrounds,
        images_per_background=args.images_per_background,
        image_size=(args.size, args.size),
        seed=args.seed,
    )
    print(f"wrote scenes to {args.out}: {summary}")
    return 0


def _masker_from(extra: list[str], provider: str | None):
    """Build an ObjectMasker from ``--bgobj_*`` flags left over by argparse."""
    from lf_ext.config import parse_bgobj_args, split_bgobj_args
    from lf_ext.masks.pipeline import ObjectMasker

    rest, found = split_bgobj_args(extra)
    if rest:
        raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
    if provider:
        found["bgobj_mask_provider"] = provider
    return ObjectMasker.from_settings(parse_bgobj_args(found))


def _cmd_show_mask(args: argparse.Namespace, extra: list[str]) -> int:
    import numpy as np

    from lf_ext.masks.geometry import grid_for_arch
    from lf_ext.masks.reference import open_image
    from lf_ext.masks.visualize import five_panels

    if args.video:
        return _show_clip(args, extra)
    masker = _masker_from(extra, args.provider)
    image = open_image(args.image, "image", args.image).convert("RGB")
    grid = grid_for_arch(args.arch, *image.size, image_max_pixels=args.image_max_pixels)
    record = {k: v for k, v in (("mask", args.mask), ("plate", args.plate)) if v}
    mask, labels = masker.mask_and_labels(image, grid, source=str(args.image), record=record)
    kept = None
    if args.patch_selection != "none":
        from lf_ext.selection import PatchSelection

        selection = PatchSelection(args.patch_selection, args.patch_alpha, tuple(float(t) for t in args.patch_thresholds.split(",")))
        resized = np.asarray(grid.to_geometry(image))
        rows, cols, unit = *grid.shape, grid.unit
        units = resized[: rows * unit, : cols * unit].reshape(rows, unit, cols, unit, 3).transpose(0, 2, 1, 3, 4)
        kept = selection.select_grid(units, labels)
    title = f"{args.image}  arch={args.arch}  provider={masker.provider_name}  patch selection={args.patch_selection}"
    five_panels(image, mask, labels, grid, title, kept).save(args.out)
    summary = "" if kept is None else f", {int(kept.sum())} units kept by {args.patch_selection}"
    print(f"wrote {args.out}: {labels.sum()} object units of {labels.size} ({grid.shape[0]}x{grid.shape[1]}){summary}")
    return 0


def _show_clip(args: argparse.Namespace, extra: list[str]) -> int:
    """``show-mask --video``: the clip's split per temporal slice, through the real plugin and processor."""
    import tempfile

    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_tokenizer
    from PIL import Image

    from lf_ext.config import split_bgobj_args
    from lf_ext.eval.prompts import encode_request
    from lf_ext.families import family_for_type
    from lf_ext.layout import LAYOUT_KEY, ImageLayout
    from lf_ext.masks.visualize import clip_panels

    rest, keys = split_bgobj_args(extra)
    if rest:
        raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
    keys.setdefault("bgobj_mask_provider", args.provider or "motion")
    family = family_for_type(args.arch)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:  # the family's default processor, from a tiny offline checkpoint
            from lf_ext.tiny.checkpoint import build_checkpoint

            model = str(build_checkpoint(args.arch, scratch, seed=0))
        values = dict(model_name_or_path=model, template=family.template, video_max_pixels=args.video_max_pixels,
                      video_fps=args.video_fps, video_maxlen=args.video_maxlen, **keys)  # fmt: skip
        model_args, data_args, _, _ = get_infer_args(values)
        module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
        request = encode_request(template, module["tokenizer"], module["processor"], "", [], videos=[args.image])
    layout = ImageLayout.unpack(request[LAYOUT_KEY])
    pixels = family.video_pixel_units(module["processor"])
    units = pixels.units(request["pixel_values"], layout, 0)  # (slices, rows, cols, u, u, 3)
    slices, rows, cols = layout.grids[0]
    frames = [Image.fromarray(u.transpose(0, 2, 1, 3, 4).reshape(rows * pixels.unit, cols * pixels.unit, 3)) for u in units]
    stock = slices * rows * cols
    title = (f"{args.image}  provider={keys['bgobj_mask_provider']}  {layout.n_tokens(0)} visual tokens of {stock} "
             f"({layout.n_background(0)} background, once)")  # fmt: skip
    clip_panels(frames, layout.item_groups(0).numpy(), pixels.unit, title).save(args.out)
    print(f"wrote {args.out}: {slices} slices of {rows}x{cols} units; {layout.n_tokens(0)} tokens instead of {stock}")
    return 0


def _cmd_masks_precompute(args: argparse.Namespace, extra: list[str]) -> int:
    from lf_ext.masks.precompute import precompute_masks

    masker = _masker_from(extra, args.provider)
    names = [n.strip() for n in args.dataset.split(",") if n.strip()]
    summary = precompute_masks(args.dataset_dir, names, args.out, masker, arch=args.arch,
                               image_max_pixels=args.image_max_pixels)  # fmt: skip
    print(f"masks in {args.out}: {summary}; use them with bgobj_mask_provider: dataset, bgobj_mask_dir: {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace, extra: list[str] = ()) -> int:
    from pathlib import Path

    if args.bench_command == "masks":
        from lf_ext.bench.masks import run_bench_masks

        scenes = Path(args.scenes) if args.scenes else Path("work/bench/scenes")
        if not (scenes / "dataset_info.json").exists():
            from lf_ext.scenes import generate_scenes

            generate_scenes(scenes, seed=0)
        run_bench_masks(scenes, args.json, yolo_weights=args.yolo_weights, limit=args.limit)
    elif args.bench_command == "cache":
        from lf_ext.bench.cache_lookup import run_bench_cache_lookup

        run_bench_cache_lookup(args.json, entries=args.entries)
    elif args.bench_command == "ttft":
        from lf_ext.bench.ttft import run_bench_ttft

        run_bench_ttft(args.json, plot=args.plot, quick=args.quick, shapes=tuple(args.shapes.split(",")),
                       sizes=tuple(int(v) for v in args.sizes.split(",")), runs=args.runs, warmup=args.warmup,
                       fractions=tuple(float(v) for v in args.fractions.split(",")), checkpoints=args.checkpoints,
                       reuse_stock=args.reuse_stock, arch=args.arch)  # fmt: skip
    elif args.bench_command == "stream":
        from lf_ext.bench.stream import run_bench_stream

        run_bench_stream(args.json, shape=args.shape, px=args.px, frames=args.frames, positions=args.positions,
                         object_fraction=args.object_fraction, checkpoints=args.checkpoints, arch=args.arch,
                         modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()))  # fmt: skip
    elif args.bench_command == "accuracy":
        from lf_ext.bench.accuracy import run_bench_accuracy
        from lf_ext.config import split_bgobj_args

        rest, keys = split_bgobj_args(extra)
        if rest:
            raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
        run_bench_accuracy(args.dataset_dir, args.train, args.test, args.json, workdir=args.workdir,
                           base_steps=args.base_steps, extra_steps=args.extra_steps,
                           image_max_pixels=args.image_max_pixels, image_min_pixels=args.image_min_pixels,
                           bgobj_keys=keys, limit=args.limit, arch=args.arch)  # fmt: skip
    elif args.bench_command == "replicas":
        from lf_ext.bench.replicas import run_bench_replicas

        run_bench_replicas(args.json, cameras=args.cameras, frames=args.frames, places=args.places, repeats=args.repeats,
                           px=args.px, clients=args.clients, requests=args.requests, workdir=args.workdir,
                           cache_mb=args.cache_mb)  # fmt: skip
    elif args.bench_command == "budget":
        from lf_ext.bench.budget import run_bench_budget

        run_bench_budget(args.json, plot=args.plot, shape=args.shape, px=args.px, alphas=tuple(float(a) for a in args.alphas.split(",")),
                         runs=args.runs, warmup=args.warmup, checkpoints=args.checkpoints, accuracy=args.accuracy,
                         dataset_dir=args.dataset_dir, workdir=args.workdir, base_steps=args.base_steps, extra_steps=args.extra_steps,
                         methods=tuple(args.methods.split(",")), ttft_from=args.ttft_from)  # fmt: skip
    elif args.bench_command == "video-options":
        from lf_ext.bench.video_options import run_bench_video_options

        run_bench_video_options(args.json, shapes=tuple(args.shapes.split(",")), side=args.px, runs=args.runs, warmup=args.warmup,
                                steps=args.steps, checkpoints=args.checkpoints, accuracy=args.accuracy,
                                dataset_dir=args.dataset_dir, workdir=args.workdir, base_steps=args.base_steps,
                                extra_steps=args.extra_steps, timing=not args.no_timing)  # fmt: skip
    elif args.bench_command == "video":
        from lf_ext.bench.video import run_bench_video

        run_bench_video(args.json, shape=args.shape, px=args.px, frames=args.frames, runs=args.runs, warmup=args.warmup,
                        stream_clips=args.stream_clips, stream_shape=args.stream_shape, checkpoints=args.checkpoints)  # fmt: skip
    elif args.bench_command == "train":
        from lf_ext.bench.train import run_bench_train

        run_bench_train(args.json, shapes=tuple(args.shapes.split(",")), steps=args.steps)
    return 0


EVAL_TASKS = tuple(sorted(METRIC_GROUPS))


def _cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from lf_ext.config import split_bgobj_args
    from lf_ext.eval.harness import run_eval

    rest, keys = split_bgobj_args(extra)
    if rest:
        raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
    other = {}
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg takes KEY=VALUE (a LLaMA-Factory argument), got '{item}'")
        other[key] = value
    run_eval(args.task, args.dataset_dir, args.dataset, args.model, args.template, args.json, plot=args.plot,
             configs=tuple(c.strip() for c in args.configs.split(",") if c.strip()), stock_model=args.stock_model,
             order=args.order, limit=args.limit, bgobj_keys=keys, image_max_pixels=args.image_max_pixels,
             max_new_tokens=args.max_new_tokens, infer_dtype=args.infer_dtype, extra_args=other,
             frames_as_images=args.frames_as_images)  # fmt: skip
    return 0


def _cmd_eval_cost(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml
    from lf_ext.bench.report import write_json
    from lf_ext.eval.cost import MODELS, run_eval_cost

    recipe = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    extra = recipe.get("args") or {}
    model = args.model_spec or next((m for m in MODELS if args.config and Path(args.config).stem.startswith(m)), None)
    pick = lambda cli, key, default: cli if cli is not None else extra.get(key, recipe.get(key, default))
    dataset_dir, datasets = pick(args.dataset_dir, "dataset_dir", None), pick(args.dataset, "dataset", None)
    if not (model and dataset_dir and datasets):
        raise ValueError("eval-cost needs --model-spec, --dataset-dir and --dataset (or a yaml/eval recipe via --config)")
    configs = args.configs or len([c for c in str(recipe.get("configs", "stock,bgobj,bgobj+cache")).split(",") if c.strip()])
    rows = run_eval_cost(dataset_dir, str(datasets).split(","), model, gpu=args.gpu, configs=configs,
                         image_max_pixels=int(pick(args.image_max_pixels, "image_max_pixels", 768 * 768)),
                         video_max_pixels=int(pick(args.video_max_pixels, "video_max_pixels", 256 * 256)),
                         video_fps=float(pick(args.video_fps, "video_fps", 2.0)),
                         video_maxlen=int(pick(args.video_maxlen, "video_maxlen", 128)),
                         max_new_tokens=int(pick(args.max_new_tokens, "max_new_tokens", 32)),
                         frames_as_images=pick(args.frames_as_images, "frames_as_images", None),
                         mfu=args.mfu, bandwidth_use=args.bandwidth_use, step_overhead_ms=args.step_overhead_ms,
                         tokenizer=args.tokenizer, probe=args.probe)  # fmt: skip
    if args.json:
        write_json(args.json, {"rows": rows})
    return 0


def _cmd_yolo_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lf_ext.masks.yolo_train import train_from_args

    scenes = Path(args.scenes)
    if not (scenes / "scenes_train.json").exists():
        raise ValueError(f"{scenes} holds no scenes (run `lf-ext scenes --out {scenes}` first)")
    weights = train_from_args(args)
    print(f"trained YOLO segmenter: {weights}\nuse it with bgobj_mask_provider: yolo, bgobj_yolo_weights: {weights}")
    return 0


def _cmd_webui(args: argparse.Namespace) -> int:
    from lf_ext.webui import run_webui

    run_webui(host=args.host, port=args.port, share=args.share, open_browser=args.open)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lf_ext.demo import run_demo

    return run_demo(args.workdir, steps=args.steps, masks=args.masks, arch=args.arch)


def _bgobj_archs() -> list[str]:
    """Tiny architectures that have a bgobj family."""
    from lf_ext.families import FAMILY_PATHS
    from lf_ext.tiny import ARCH_NAMES

    return [arch for arch in ARCH_NAMES if arch in FAMILY_PATHS]


def _timing_model_options(parser: argparse.ArgumentParser) -> None:
    """Where a timing bench's random checkpoints live, and its handler."""
    parser.add_argument("--checkpoints", default="work/bench/checkpoints", help="where the random checkpoints are built once and reused")
    parser.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    from lf_ext.masks.yolo_train import add_train_arguments as add_yolo_train_arguments
    from lf_ext.tiny import ARCH_NAMES, SHAPES

    parser = argparse.ArgumentParser(prog="lf-ext", description="lf_ext tools for LLaMA-Factory VLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("config", help="list every bgobj_* key with its default and help").set_defaults(func=_cmd_config)

    tiny = sub.add_parser("tiny", help="write a small random checkpoint (offline)")
    tiny.add_argument("--arch", required=True, choices=ARCH_NAMES)
    tiny.add_argument("--out", required=True, help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--shape", default="tiny", choices=list(SHAPES),
                      help="'small': ~100M params; '2b': Qwen2-VL-2B dimensions; '7b': LLaVA-1.5-7B dimensions; all for timing only")
    tiny.set_defaults(func=_cmd_tiny)

    scenes = sub.add_parser("scenes", help="generate the synthetic background/object scenes dataset")
    scenes.add_argument("--out", required=True)
    scenes.add_argument("--backgrounds", type=int, default=12)
    scenes.add_argument("--images-per-background", type=int, default=8)
    scenes.add_argument("--size", type=int, default=448, help="image side in pixels")
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--video", action="store_true",
                        help="fixed-camera mp4 clips with per-frame masks instead (backgrounds = cameras, "
                             "images-per-background = clips per camera)")
    scenes.add_argument("--frames", type=int, default=16, help="--video: frames per clip")
    scenes.add_argument("--fps", type=int, default=2, help="--video: frames per second (LLaMA-Factory samples video_fps 2.0)")
    scenes.set_defaults(func=_cmd_scenes)

    show = sub.add_parser("show-mask", help="draw image, mask, resized image, resized mask and token-unit labels")
    show.add_argument("image")
    show.add_argument("--arch", required=True, choices=ARCH_NAMES)
    show.add_argument("--provider", help="shortcut for --bgobj_mask_provider")
    show.add_argument("--mask", help="mask file for the 'dataset' provider")
    show.add_argument("--plate", help="reference plate for the 'reference' provider")
    show.add_argument("--image-max-pixels", type=int, default=768 * 768)
    show.add_argument("--out", required=True, help="PNG to write")
    from lf_ext.selection import METHODS as SELECTION_METHODS

    show.add_argument("--patch-selection", default="none", choices=list(SELECTION_METHODS),
                      help="also draw the units a token budget keeps (dropped: grey)")
    show.add_argument("--patch-alpha", type=float, default=0.3, help="alpha of budget / v2")
    show.add_argument("--patch-thresholds", default="3,2", help="v1 thresholds (2x2 and 4x4 blocks)")
    show.add_argument("--video", action="store_true", help="the input is a video clip: draw its split per temporal slice")
    show.add_argument("--model", default=None, help="--video: the model folder whose processor to use (default: the family's)")
    show.add_argument("--video-max-pixels", type=int, default=448 * 448)
    show.add_argument("--video-fps", type=float, default=2.0)
    show.add_argument("--video-maxlen", type=int, default=16)
    show.set_defaults(func=_cmd_show_mask, takes_bgobj=True)

    masks = sub.add_parser("masks", help="mask tools").add_subparsers(dest="masks_command", required=True)
    pre = masks.add_parser("precompute", help="run a provider over a dataset and save masks (resumable)")
    pre.add_argument("--dataset-dir", required=True)
    pre.add_argument("--dataset", required=True, help="comma-separated names from dataset_info.json")
    pre.add_argument("--out", required=True)
    pre.add_argument("--arch", default="qwen2_vl", choices=ARCH_NAMES)
    pre.add_argument("--provider", help="shortcut for --bgobj_mask_provider")
    pre.add_argument("--image-max-pixels", type=int, default=768 * 768)
    pre.set_defaults(func=_cmd_masks_precompute, takes_bgobj=True)

    yolo = sub.add_parser("yolo-train", help="train a small YOLO segmenter on the scenes (CPU, offline)")
    yolo.add_argument("--scenes", required=True, help="a folder written by `lf-ext scenes`")
    yolo.add_argument("--out", required=True)
    add_yolo_train_arguments(yolo)  # train_yolo's own defaults: one source of truth
    yolo.set_defaults(func=_cmd_yolo_train)

    bench = sub.add_parser("bench", help="benchmarks: print a table and write JSON").add_subparsers(
        dest="bench_command", required=True)  # fmt: skip
    bench_masks = bench.add_parser("masks", help="token-unit IoU and latency per mask provider on held-out scenes")
    bench_masks.add_argument("--json", required=True, help="where to write the results")
    bench_masks.add_argument("--scenes", help="scenes folder (default: generate work/bench/scenes)")
    bench_masks.add_argument("--yolo-weights", help="also measure the yolo provider with this checkpoint")
    bench_masks.add_argument("--limit", type=int, help="at most this many test images")
    bench_masks.set_defaults(func=_cmd_bench)

    bench_train = bench.add_parser("train", help="training step time, qwen2_vl_bgobj vs qwen2_vl")
    bench_train.add_argument("--json", required=True)
    bench_train.add_argument("--shapes", default="tiny,small", help="comma-separated: tiny, small")
    bench_train.add_argument("--steps", type=int, default=8, help="steps per run (the first 2 are warm-up)")
    bench_train.set_defaults(func=_cmd_bench)

    bench_ttft = bench.add_parser("ttft", help="time to first token: stock layout, bgobj miss, bgobj hit")
    bench_ttft.add_argument("--json", required=True)
    bench_ttft.add_argument("--plot", help="also draw TTFT against object fraction to this PNG")
    bench_ttft.add_argument("--quick", action="store_true", help="only the 2b-shaped, 896 px, 20%% object row")
    bench_ttft.add_argument("--arch", default="qwen2_vl", choices=_bgobj_archs(), help="model family")
    bench_ttft.add_argument("--shapes", default="tiny,2b", help="comma-separated: tiny, small, 2b (Qwen2-VL), 7b (LLaVA)")
    bench_ttft.add_argument("--sizes", default="448,896", help="comma-separated image sizes in pixels")
    bench_ttft.add_argument("--fractions", default="0.05,0.1,0.2,0.4,0.6", help="object fractions")
    bench_ttft.add_argument("--runs", type=int, default=5, help="recorded runs per row (median)")
    bench_ttft.add_argument("--warmup", type=int, default=1, help="unrecorded rounds before them")
    bench_ttft.add_argument("--reuse-stock", action="store_true",
                            help="measure stock once per model and image size (first fraction), reuse it for the others")
    _timing_model_options(bench_ttft)

    bench_stream = bench.add_parser("stream", help="fixed camera, moving object, ticking clock: stock vs cache vs cache+refine")
    bench_stream.add_argument("--json", required=True)
    bench_stream.add_argument("--arch", default="qwen2_vl", choices=_bgobj_archs(), help="model family")
    bench_stream.add_argument("--shape", default="2b", help="tiny, small, 2b (Qwen2-VL) or 7b (LLaVA); random weights")
    bench_stream.add_argument("--px", type=int, default=448, help="frame size in pixels")
    bench_stream.add_argument("--frames", type=int, default=16)
    bench_stream.add_argument("--positions", type=int, default=3, help="places the object moves between")
    bench_stream.add_argument("--object-fraction", type=float, default=0.1, help="object units / all units")
    bench_stream.add_argument("--modes", default="exact,cache,cache+refine",
                              help="comma-separated: exact (policy exact), cache (reuse, no refinement), cache+refine (the default policy)")
    _timing_model_options(bench_stream)

    bench_acc = bench.add_parser("accuracy", help="exact match: stock vs bgobj (miss) vs bgobj with forced cache hits")
    bench_acc.add_argument("--dataset-dir", required=True, help="LLaMA-Factory dataset folder (dataset_info.json)")
    bench_acc.add_argument("--train", required=True, help="train split name in dataset_info.json")
    bench_acc.add_argument("--test", required=True, help="test split name in dataset_info.json")
    bench_acc.add_argument("--json", required=True)
    bench_acc.add_argument("--workdir", default="work/bench/accuracy")
    bench_acc.add_argument("--base-steps", type=int, default=1500, help="stock training from scratch")
    bench_acc.add_argument("--extra-steps", type=int, default=500, help="extra budget for stock and for bgobj")
    bench_acc.add_argument("--image-max-pixels", type=int, default=50176)
    bench_acc.add_argument("--image-min-pixels", type=int, default=None, help="for datasets of small images")
    bench_acc.add_argument("--limit", type=int, default=None, help="at most this many test questions")
    bench_acc.add_argument("--arch", default="qwen2_vl", choices=_bgobj_archs(), help="model family of the tiny model")
    bench_acc.set_defaults(func=_cmd_bench, takes_bgobj=True)

    bench_rep = bench.add_parser("replicas", help="2 api replicas, round-robin: hit rate and latency with and without "
                                 "the shared Redis tier, a load test and a Redis outage")  # fmt: skip
    bench_rep.add_argument("--json", required=True)
    bench_rep.add_argument("--cameras", type=int, default=4)
    bench_rep.add_argument("--frames", type=int, default=16, help="frames per camera")
    bench_rep.add_argument("--places", type=int, default=8, help="spots each camera's object patrols")
    bench_rep.add_argument("--repeats", type=int, default=3, help="sets of cameras (other backgrounds) per phase")
    bench_rep.add_argument("--px", type=int, default=224, help="frame size in pixels")
    bench_rep.add_argument("--clients", type=int, default=8, help="load test: concurrent clients")
    bench_rep.add_argument("--requests", type=int, default=200, help="load test: requests per client")
    bench_rep.add_argument("--cache-mb", type=float, default=8.0, help="bgobj_cache_max_mb of each replica")
    bench_rep.add_argument("--workdir", default="work/bench/replicas", help="tiny checkpoint, recipes and server logs")
    bench_rep.set_defaults(func=_cmd_bench)

    bench_vo = bench.add_parser("video-options", help="video options (pooling, scales, fast/slow): tokens, TTFT, step time, accuracy")
    bench_vo.add_argument("--json", required=True)
    bench_vo.add_argument("--shapes", default="tiny,small")
    bench_vo.add_argument("--px", type=int, default=224, help="frame side of the generated video scenes")
    bench_vo.add_argument("--runs", type=int, default=3)
    bench_vo.add_argument("--warmup", type=int, default=1)
    bench_vo.add_argument("--steps", type=int, default=6, help="training steps timed per variant (2 warm-up)")
    bench_vo.add_argument("--checkpoints", default="work/bench/checkpoints")
    bench_vo.add_argument("--accuracy", action="store_true", help="also train and evaluate each variant on video QA (slow)")
    bench_vo.add_argument("--dataset-dir", default=None, help="video scenes folder (default: generated in the workdir)")
    bench_vo.add_argument("--workdir", default="work/bench/video_options")
    bench_vo.add_argument("--base-steps", type=int, default=600)
    bench_vo.add_argument("--extra-steps", type=int, default=200)
    bench_vo.add_argument("--no-timing", action="store_true", help="skip TTFT and step time (e.g. --accuracy alone)")
    bench_vo.set_defaults(func=_cmd_bench)
    bench_budget = bench.add_parser("budget", help="token budget: tokens, TTFT and accuracy per alpha (entropy vs random/uniform)")
    bench_budget.add_argument("--json", required=True)
    bench_budget.add_argument("--plot", default=None)
    bench_budget.add_argument("--shape", default="2b")
    bench_budget.add_argument("--px", type=int, default=896)
    bench_budget.add_argument("--alphas", default="0.1,0.2,0.3,0.5,0.7,1.0")
    bench_budget.add_argument("--runs", type=int, default=3)
    bench_budget.add_argument("--warmup", type=int, default=1)
    _timing_model_options(bench_budget)
    bench_budget.add_argument("--accuracy", action="store_true", help="also train and evaluate each (method, alpha) (slow)")
    bench_budget.add_argument("--dataset-dir", default=None, help="--accuracy: the scenes folder")
    bench_budget.add_argument("--workdir", default="work/bench/budget")
    bench_budget.add_argument("--methods", default="budget,v2,random,uniform")
    bench_budget.add_argument("--base-steps", type=int, default=None, help="default: bench accuracy's")
    bench_budget.add_argument("--extra-steps", type=int, default=None, help="default: bench accuracy's")
    bench_budget.add_argument("--ttft-from", default=None, help="reuse the TTFT rows of an earlier JSON of this bench (no timing)")

    bench_video = bench.add_parser("video", help="clip TTFT: stock vs motion pruning vs bgobj miss/hit, and a stream's hit rate")
    bench_video.add_argument("--json", required=True)
    bench_video.add_argument("--shape", default="2b", help="model shape timed (random weights)")
    bench_video.add_argument("--px", type=int, default=448, help="frame side in pixels")
    bench_video.add_argument("--frames", type=int, default=16)
    bench_video.add_argument("--runs", type=int, default=3)
    bench_video.add_argument("--warmup", type=int, default=1)
    bench_video.add_argument("--stream-clips", type=int, default=64, help="sliding windows in the hit-rate stream")
    bench_video.add_argument("--stream-shape", default="tiny", help="model of the hit-rate stream (hits depend on pixels only)")
    _timing_model_options(bench_video)

    bench_cache = bench.add_parser("cache", help="background cache lookup latency with many entries")
    bench_cache.add_argument("--json", required=True)
    bench_cache.add_argument("--entries", type=int, default=10000)
    bench_cache.set_defaults(func=_cmd_bench)

    from lf_ext.eval.convert.cli import add_parser as add_data_parser

    add_data_parser(sub)

    from lf_ext.eval.harness import CONFIGS, ORDERS

    evaluate = sub.add_parser("eval", help="answer a converted benchmark with stock, bgobj and bgobj+cache: metric, "
                                            "intervals, per-component time")  # fmt: skip
    evaluate.add_argument("--config", help="a recipe (yaml/eval/*.yaml) whose keys are these options; the command line wins")
    evaluate.add_argument("task", choices=EVAL_TASKS, help="the benchmark's metric (exact: any short-answer dataset)")
    evaluate.add_argument("--dataset-dir", required=True, help="LLaMA-Factory dataset folder (dataset_info.json)")
    evaluate.add_argument("--dataset", required=True, help="dataset name in dataset_info.json")
    evaluate.add_argument("--model", required=True, help="the bgobj model (folder)")
    evaluate.add_argument("--template", required=True, help="its bgobj template, e.g. qwen2_vl_bgobj, llava_bgobj")
    evaluate.add_argument("--stock-model", default=None, help="the model for the stock configuration (default: --model)")
    evaluate.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    evaluate.add_argument("--order", default="stream", choices=ORDERS,
                          help="stream: samples sharing a screen/camera/image together (realistic reuse)")
    evaluate.add_argument("--limit", type=int, default=None, help="at most this many samples")
    evaluate.add_argument("--frames-as-images", type=int, default=None,
                          help="video questions answered from this many of their frames as images (LLaVA-1.5)")
    evaluate.add_argument("--json", required=True)
    evaluate.add_argument("--plot", default=None, help="PNG: accuracy vs mean TTFT per configuration")
    evaluate.add_argument("--image-max-pixels", type=int, default=50176)
    evaluate.add_argument("--max-new-tokens", type=int, default=32)
    evaluate.add_argument("--infer-dtype", default="auto", help="auto, float16, bfloat16 or float32 (CPU: float32)")
    evaluate.add_argument("--arg", action="append", metavar="KEY=VALUE", help="another LLaMA-Factory argument, repeatable")
    evaluate.set_defaults(func=_cmd_eval, takes_bgobj=True)

    from lf_ext.eval.cost import GPUS, MODELS

    cost = sub.add_parser("eval-cost", help="GPU-hours of an lf-ext eval run on paper, from the tokens of the converted records")
    cost.add_argument("--config", help="a yaml/eval recipe: its dataset, pixels, configurations and model")
    cost.add_argument("--model-spec", choices=sorted(MODELS), help="the released model (default: from the recipe's name)")
    cost.add_argument("--dataset-dir")
    cost.add_argument("--dataset", help="one or more names, comma-separated")
    cost.add_argument("--gpu", choices=sorted(GPUS), default="a100")
    cost.add_argument("--configs", type=int, default=None, help="configurations answered (default: the recipe's, else 3)")
    cost.add_argument("--image-max-pixels", type=int, default=None)
    cost.add_argument("--video-max-pixels", type=int, default=None)
    cost.add_argument("--video-fps", type=float, default=None)
    cost.add_argument("--video-maxlen", type=int, default=None)
    cost.add_argument("--max-new-tokens", type=int, default=None)
    cost.add_argument("--frames-as-images", type=int, default=None)
    cost.add_argument("--mfu", type=float, default=0.4, help="fraction of the bf16 peak reached by vision and prefill")
    cost.add_argument("--bandwidth-use", type=float, default=0.6, help="fraction of memory bandwidth reached by decode")
    cost.add_argument("--step-overhead-ms", type=float, default=15.0, help="Python/launch time per decode step")
    cost.add_argument("--tokenizer", help="a local tokenizer folder for text tokens (default: ~4 characters a token)")
    cost.add_argument("--probe", type=int, default=None, help="measure the first N records only, scale to all")
    cost.add_argument("--json")
    cost.set_defaults(func=_cmd_eval_cost)

    webui = sub.add_parser("webui", help="LlamaBoard with this environment's llamafactory-cli and CPU-safe defaults")
    webui.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    webui.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free one)")
    webui.add_argument("--share", action="store_true", help="also open a public gradio share link")
    webui.add_argument("--open", action="store_true", help="open a browser tab")
    webui.set_defaults(func=_cmd_webui)

    demo = sub.add_parser("demo", help="stock vs bgobj stages on the scenes, through llamafactory-cli")
    demo.add_argument("--workdir", default="work/demo")
    demo.add_argument("--steps", type=int, default=None, help="base training steps (extra budget: a third of it)")
    demo.add_argument("--masks", default="dataset", choices=["dataset", "yolo"],
                      help="bgobj masks: the scenes' own, or a YOLO segmenter trained on them first (slow)")
    demo.add_argument("--arch", default="qwen2_vl", choices=_bgobj_archs(), help="model family of the tiny model")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _with_eval_config(argv: list[str]) -> list[str]:
    """``lf-ext eval --config RECIPE [...]``: the recipe's keys as arguments, before (so below) the command line's."""
    if len(argv) < 1 or argv[0] != "eval" or "--config" not in argv:
        return argv
    import yaml

    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise SystemExit("lf-ext eval: --config needs a YAML file")
    path = argv[at + 1]
    rest = argv[1:at] + argv[at + 2 :]
    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as err:
        raise SystemExit(f"lf-ext eval: cannot read --config {path}: {err}") from None
    tokens: list[str] = []
    task = values.pop("task", None)
    for key, value in values.items():
        if key == "args":
            tokens += [t for k, v in (value or {}).items() for t in ("--arg", f"{k}={v}")]
        elif key.startswith("bgobj_"):
            tokens += [f"--{key}", str(value)]
        else:
            tokens += [f"--{key.replace('_', '-')}", str(value)]
    positional = [task] if task and not any(a in EVAL_TASKS for a in rest) else []
    return ["eval", *positional, *tokens, *rest]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _with_eval_config(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_bgobj", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) if getattr(args, "takes_bgobj", False) else args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"lf-ext {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
