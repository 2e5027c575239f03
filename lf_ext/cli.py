"""The ``lf-ext`` command line: ``config``, ``tiny``, ``scenes`` and ``demo``."""

from __future__ import annotations

import argparse
import sys


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

    summary = generate_scenes(
        args.out,
        num_backgrounds=args.backgrounds,
        images_per_background=args.images_per_background,
        image_size=(args.size, args.size),
        seed=args.seed,
    )
    print(f"wrote scenes to {args.out}: {summary}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lf_ext.demo import run_demo

    return run_demo(args.workdir, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    from lf_ext.tiny import ARCH_NAMES, SHAPES

    parser = argparse.ArgumentParser(prog="lf-ext", description="lf_ext tools for LLaMA-Factory VLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("config", help="list every bgobj_* key with its default and help").set_defaults(func=_cmd_config)

    tiny = sub.add_parser("tiny", help="write a small random checkpoint (offline)")
    tiny.add_argument("--arch", required=True, choices=ARCH_NAMES)
    tiny.add_argument("--out", required=True, help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--shape", default="tiny", choices=list(SHAPES), help="'2b': Qwen2-VL-2B dimensions, timing only")
    tiny.set_defaults(func=_cmd_tiny)

    scenes = sub.add_parser("scenes", help="generate the synthetic background/object scenes dataset")
    scenes.add_argument("--out", required=True)
    scenes.add_argument("--backgrounds", type=int, default=12)
    scenes.add_argument("--images-per-background", type=int, default=8)
    scenes.add_argument("--size", type=int, default=448, help="image side in pixels")
    scenes.add_argument("--seed", type=int, default=0)
    scenes.set_defaults(func=_cmd_scenes)

    demo = sub.add_parser("demo", help="tiny checkpoint + scenes + a yaml/ recipe through llamafactory-cli")
    demo.add_argument("--workdir", default="work/demo")
    demo.add_argument("--steps", type=int, default=None, help="override the recipe's max_steps")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"lf-ext {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
