"""GPU-hours of an ``lf-ext eval`` run, on paper: tokens per sample measured on the converted records (visual
tokens from each image's real token grid, video frames as LLaMA-Factory samples them, text and answer tokens
from a tokenizer or ~4 characters per token), FLOPs from the real models' published parameter counts, time at
a stated fraction of a GPU's peak.

The model: vision = 2 x vision params x patches; prefill = 2 x LLM params x (visual + text tokens), both at
``mfu`` of the GPU's dense bf16 peak; decode = answer tokens x the bytes of the weights read once per token at
``bandwidth_use`` of its memory bandwidth plus ``step_overhead_ms`` of Python/kernel-launch time per step (HF
``generate`` at batch 1, as ``lf-ext eval`` answers). Attention FLOPs, image
decoding and model loading are left out (a few percent at these lengths). bgobj+cache is counted as a miss:
an upper bound, since a hit only skips work.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lf_ext.eval.datasets import read_records, record_images, record_videos
from lf_ext.eval.harness import frames_as_images_of, prompt_of


@dataclass(frozen=True)
class ModelSpec:
    """A released checkpoint's sizes (parameters from its model card / config)."""

    arch: str  # token-grid architecture (lf_ext.masks.geometry.grid_for_arch)
    llm_params: float
    vision_params: float
    patches_per_token: int  # vision-tower patches behind one visual token


MODELS = {
    "qwen2_vl_2b": ModelSpec("qwen2_vl", 1.54e9, 0.675e9, 4),  # Qwen2-1.5B LLM + 675M ViT, 2x2 merge
    "qwen2_5_vl_3b": ModelSpec("qwen2_5_vl", 3.09e9, 0.67e9, 4),  # Qwen2.5-3B LLM + 670M ViT, 2x2 merge
    "llava1_5_7b": ModelSpec("llava", 6.74e9, 0.30e9, 1),  # Llama-2-7B (Vicuna) + CLIP ViT-L/14-336, 576 tokens
}


@dataclass(frozen=True)
class GpuSpec:
    bf16_tflops: float  # dense
    memory_tbps: float


GPUS = {"a100": GpuSpec(312.0, 2.04), "h100": GpuSpec(989.0, 3.35), "h200": GpuSpec(989.0, 4.8)}


@dataclass(frozen=True)
class SampleTokens:
    visual: int
    patches: int
    text: int
    answer: int


def _image_size(path: Any) -> tuple[int, int]:
    from PIL import Image

    if hasattr(path, "size"):
        return path.size
    with Image.open(path) as image:
        return image.size


def _video_frames(video: Any, fps: float, maxlen: int) -> tuple[int, tuple[int, int]]:
    """(frames LLaMA-Factory samples, frame size) of a frame list or a video file."""
    if isinstance(video, list):
        return min(len(video), maxlen), _image_size(video[0])
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        total = stream.frames or 0
        duration = float(stream.duration * stream.time_base) if stream.duration else total / float(stream.average_rate or 1)
        size = (stream.codec_context.width, stream.codec_context.height)
    return max(1, min(total or maxlen, maxlen, math.floor(duration * fps))), size


def sample_tokens(record: dict, dataset_dir: Path, spec: ModelSpec, image_max_pixels: int, video_max_pixels: int,
                  video_fps: float, video_maxlen: int, count_text, max_new_tokens: int) -> SampleTokens:  # fmt: skip
    """One record's token counts for ``spec``'s processor settings."""
    from lf_ext.masks.geometry import grid_for_arch

    visual = patches = 0
    for image in record_images(record, dataset_dir):
        units = grid_for_arch(spec.arch, *_image_size(image), image_max_pixels=image_max_pixels).num_units
        visual, patches = visual + units, patches + units * spec.patches_per_token
    for video in record_videos(record, dataset_dir):
        frames, size = _video_frames(video, video_fps, video_maxlen)
        units = grid_for_arch(spec.arch, *size, image_max_pixels=video_max_pixels).num_units
        slices = math.ceil(frames / 2)  # Qwen: 2 frames per temporal patch
        visual, patches = visual + slices * units, patches + slices * 2 * units * spec.patches_per_token
    text = sum(count_text(m["content"]) for m in prompt_of(record)) + 16  # + chat template
    answer = min(max_new_tokens, count_text(record["messages"][-1]["content"]) + 1)  # + end of turn
    return SampleTokens(visual, patches, text, answer)


def seconds_per_sample(tokens: SampleTokens, spec: ModelSpec, gpu: GpuSpec, mfu: float, bandwidth_use: float,
                       step_overhead_ms: float = 0.0) -> dict:  # fmt: skip
    """Vision, prefill and decode seconds of one sample."""
    peak = gpu.bf16_tflops * 1e12 * mfu
    weights_bytes = 2 * (spec.llm_params + spec.vision_params)
    return {"vision": 2 * spec.vision_params * tokens.patches / peak,
            "prefill": 2 * spec.llm_params * (tokens.visual + tokens.text) / peak,
            "decode": tokens.answer * (weights_bytes / (gpu.memory_tbps * 1e12 * bandwidth_use) + step_overhead_ms / 1e3)}  # fmt: skip


def _text_counter(tokenizer: str | None):
    if tokenizer is None:
        return lambda text: max(1, round(len(text) / 4))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def estimate(records: Sequence[dict], dataset_dir: str | Path, model: str, gpu: str = "a100", configs: int = 3,
             image_max_pixels: int = 768 * 768, video_max_pixels: int = 256 * 256, video_fps: float = 2.0,
             video_maxlen: int = 128, max_new_tokens: int = 32, mfu: float = 0.4, bandwidth_use: float = 0.6, step_overhead_ms: float = 15.0,
             tokenizer: str | None = None, frames_as_images: int | None = None, probe: int | None = None) -> dict:  # fmt: skip
    """Tokens and GPU-hours for ``records`` (measured on the first ``probe`` records, scaled to all)."""
    if model not in MODELS:
        raise ValueError(f"unknown model '{model}'; known: {', '.join(MODELS)}")
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU '{gpu}'; known: {', '.join(GPUS)}")
    if not records:
        raise ValueError("the dataset is empty")
    spec, count_text, dataset_dir = MODELS[model], _text_counter(tokenizer), Path(dataset_dir)
    measured: list[SampleTokens] = []
    for index, record in enumerate(records[:probe] if probe else records):
        try:
            if frames_as_images:
                record = frames_as_images_of(record, frames_as_images)
            measured.append(sample_tokens(record, dataset_dir, spec, image_max_pixels, video_max_pixels, video_fps,
                                          video_maxlen, count_text, max_new_tokens))  # fmt: skip
        except (OSError, ValueError) as err:
            raise ValueError(f"dataset record {index} (id {(record.get('meta') or {}).get('id', '?')}): {err}") from None
    seconds = [seconds_per_sample(t, spec, GPUS[gpu], mfu, bandwidth_use, step_overhead_ms) for t in measured]
    mean = {k: sum(s[k] for s in seconds) / len(seconds) for k in ("vision", "prefill", "decode")}
    per_sample = sum(mean.values())
    return {"model": model, "gpu": gpu, "mfu": mfu, "bandwidth_use": bandwidth_use, "step_overhead_ms": step_overhead_ms,
            "n": len(records),
            "measured": len(measured), "configs": configs,
            "mean_tokens": {k: sum(getattr(t, k) for t in measured) / len(measured) for k in ("visual", "text", "answer")},
            "seconds_per_sample": mean, "gpu_hours": per_sample * len(records) * configs / 3600}  # fmt: skip


def run_eval_cost(dataset_dir: str | Path, datasets: Iterable[str], model: str, **options: Any) -> list[dict]:
    """Print one row per dataset and return them."""
    rows = []
    print(f"{'dataset':<24}{'n':>8}{'visual':>8}{'text':>6}{'answer':>7}{'vision ms':>10}{'prefill ms':>11}"
          f"{'decode ms':>10}{'GPU-h':>8}")  # fmt: skip
    for name in datasets:
        row = {"dataset": name, **estimate(read_records(dataset_dir, name), dataset_dir, model, **options)}
        rows.append(row)
        tok, sec = row["mean_tokens"], row["seconds_per_sample"]
        print(f"{name:<24}{row['n']:>8}{tok['visual']:>8.0f}{tok['text']:>6.0f}{tok['answer']:>7.1f}"
              f"{sec['vision'] * 1e3:>10.1f}{sec['prefill'] * 1e3:>11.1f}{sec['decode'] * 1e3:>10.1f}{row['gpu_hours']:>8.2f}")  # fmt: skip
    print(f"({model} on one {options.get('gpu', 'a100')}, {options.get('configs', 3)} configurations, bgobj+cache "
          "counted as a miss: an upper bound; see lf_ext/eval/cost.py for the model)")  # fmt: skip
    return rows
