"""Token-unit geometry against the real LLaMA-Factory plugins and Hugging Face processors."""

import numpy as np
import pytest
import torch
from PIL import Image

from lf_ext.masks.geometry import llava_grid, qwen2_vl_grid, unit_coverage, unit_labels

SIZES = [(448, 448), (640, 480), (333, 517), (1000, 37), (37, 1000), (20, 15), (5, 3000), (3000, 10), (1, 1),
         (2048, 1536), (29, 29), (57, 85)]  # fmt: skip


@pytest.fixture(scope="module")
def qwen(tiny_dir):
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir("qwen2_vl"))
    processor.image_max_pixels, processor.image_min_pixels = 200704, 1024
    return get_mm_plugin("qwen2_vl", image_token="<|image_pad|>", video_token="<|video_pad|>"), processor


@pytest.fixture(scope="module")
def llava(tiny_dir):
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir("llava"))
    processor.image_max_pixels, processor.image_min_pixels = 200704, 1024
    return get_mm_plugin("llava", image_token="<image>"), processor


def _random_units(rows: int, cols: int, unit: int, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    colours = np.random.default_rng(seed).integers(0, 256, size=(rows, cols, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(colours, unit, axis=0), unit, axis=1)
    return Image.fromarray(pixels), colours


@pytest.mark.parametrize("size", SIZES)
def test_qwen_grid_matches_plugin_and_processor(qwen, size):
    plugin, processor = qwen
    image = Image.new("RGB", size, (120, 60, 30))
    inputs = plugin._get_mm_inputs([image], [], [], processor)
    t, h, w = inputs["image_grid_thw"][0].tolist()
    grid = qwen2_vl_grid(*size, image_max_pixels=200704, image_min_pixels=1024)
    assert (t, h // 2, w // 2) == (1, *grid.shape)
    assert grid.size == (w * 14, h * 14)


def test_qwen_unit_order_is_row_major(qwen):
    """Merged token k covers unit (k // cols, k % cols): checked on an image the processor does not resize."""
    plugin, processor = qwen
    image, colours = _random_units(6, 9, 28)
    grid = qwen2_vl_grid(*image.size, image_max_pixels=200704, image_min_pixels=1024)
    assert grid.shape == (6, 9) and grid.steps[-1] == image.size
    pixel_values = plugin._get_mm_inputs([image], [], [], processor)["pixel_values"]
    patches = pixel_values.reshape(6 * 9, 4, 3, 2, 14, 14)  # unit, 2x2 patches, channel, time, patch
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    for k in range(6 * 9):
        rgb = (patches[k, 0, :, 0] * std + mean).mean(dim=(1, 2)) * 255
        assert torch.allclose(rgb, torch.tensor(colours[k // 9, k % 9], dtype=torch.float32), atol=1.0), k


@pytest.mark.parametrize("size", [(336, 336), (672, 336), (336, 700), (500, 400), (1000, 37), (20, 15)])
def test_llava_crop_matches_processor(llava, size):
    plugin, processor = llava
    rng = np.random.default_rng(1)
    original = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).resize(
        size, Image.NEAREST
    )
    grid = llava_grid(*size, image_max_pixels=200704, image_min_pixels=1024)
    assert grid.shape == (24, 24)
    pixel_values = plugin._get_mm_inputs([original], [], [], processor)["pixel_values"][0]
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    theirs = ((pixel_values * std + mean) * 255).permute(1, 2, 0).numpy()
    ours = np.asarray(grid.to_geometry(original), dtype=np.float32)
    assert ours.shape == theirs.shape == (336, 336, 3)
    # interpolation kernels differ (PIL vs torchvision), alignment must not: shifted crops are much worse
    error = np.abs(ours - theirs).mean()
    shifted = np.abs(np.roll(ours, 7, axis=1) - theirs).mean()
    assert error < 0.5 * shifted


def test_llava_unit_order_is_row_major(llava):
    plugin, processor = llava
    image, colours = _random_units(24, 24, 14, seed=2)
    pixel_values = plugin._get_mm_inputs([image], [], [], processor)["pixel_values"][0]
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    rgb = ((pixel_values * std + mean) * 255).reshape(3, 24, 14, 24, 14).mean(dim=(2, 4)).permute(1, 2, 0)
    assert torch.allclose(rgb, torch.tensor(colours, dtype=torch.float32), atol=1.5)


def test_coverage_rule():
    mask = np.zeros((56, 84), dtype=np.float32)
    mask[0:28, 0:7] = 1.0  # a quarter of unit (0, 0)
    mask[30, 60] = 1.0  # one pixel of unit (1, 2)
    coverage = unit_coverage(mask, 28)
    assert coverage.shape == (2, 3)
    assert coverage[0, 0] == pytest.approx(0.25) and coverage[1, 2] == pytest.approx(1 / 784)
    assert unit_labels(mask, 28).sum() == 2  # default: any object pixel makes an object unit
    assert unit_labels(mask, 28, threshold=0.2).tolist() == [[True, False, False], [False, False, False]]
    with pytest.raises(ValueError, match="whole number"):
        unit_coverage(np.zeros((30, 28)), 28)
    with pytest.raises(ValueError, match="threshold"):
        unit_labels(mask, 28, threshold=1.0)


def test_mask_follows_the_image_through_the_geometry():
    """An object drawn on a 640x480 original lands on the units it covers after smart-resize."""
    grid = qwen2_vl_grid(640, 480, image_max_pixels=200704)
    mask = Image.new("L", (640, 480), 0)
    mask.paste(255, (320, 240, 640, 480))  # bottom-right quarter
    labels = unit_labels(np.asarray(grid.to_geometry(mask), dtype=np.float32) / 255, grid.unit)
    rows, cols = grid.shape
    expected = np.zeros((rows, cols), dtype=bool)
    expected[rows // 2 :, cols // 2 :] = True
    assert labels.shape == (rows, cols) and (labels == expected).mean() > 0.95
    assert labels[-1, -1] and not labels[0, 0]


def test_empty_side_is_an_error():
    with pytest.raises(ValueError, match="empty side"):
        qwen2_vl_grid(0, 10)


@pytest.fixture(scope="module")
def llava_pad(tiny_dir):
    """LLaVA-1.5's pad-to-square mode: ``LlavaImageProcessor(do_pad=True)`` (the original ``image_aspect_ratio: pad``)."""
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import AutoTokenizer

    from lf_ext.families.llava.tiny import llava_processor

    processor = llava_processor(AutoTokenizer.from_pretrained(tiny_dir("llava")), pad=True)
    processor.image_max_pixels, processor.image_min_pixels = 200704, 1024
    return get_mm_plugin("llava", image_token="<image>"), processor


@pytest.mark.parametrize("size", [(336, 336), (672, 336), (336, 700), (500, 400), (1000, 37), (37, 1000), (20, 15), (333, 517)])
def test_llava_pad_matches_processor(llava_pad, size):
    """Pad to a square with the mean colour, then resize: the geometry lands on the processor's pixels,
    and a mask follows it (padding is background)."""
    from lf_ext.families import family_for_type

    plugin, processor = llava_pad
    rng = np.random.default_rng(2)
    original = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    grid = family_for_type("llava").token_grid(*size, processor)
    assert grid.shape == (24, 24) and (grid.pad is not None) == (size[0] != size[1])
    pixel_values = plugin._get_mm_inputs([original], [], [], processor)["pixel_values"][0]
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    theirs = ((pixel_values * std + mean) * 255).permute(1, 2, 0).numpy()
    ours = np.asarray(grid.to_geometry(original), dtype=np.float32)
    error = np.abs(ours - theirs).mean()
    assert error < 0.5 * np.abs(np.roll(ours, 7, axis=1) - theirs).mean()
    assert error < 0.5 * np.abs(np.roll(ours, 7, axis=0) - theirs).mean()
    if grid.pad is not None:  # the padded band holds the mean colour in both, and the mask says background there
        mask = np.asarray(grid.to_geometry(Image.new("L", size, 255)), dtype=np.float32) / 255
        band = mask == 0
        reach = int(4 * max(1.0, 336 / max(grid.steps[0])))  # bicubic upscaling blends over a few source pixels
        for shift in (-reach, reach):  # away from the edge, where the resize blends padding and image
            band &= np.roll(band, shift, axis=0) & np.roll(band, shift, axis=1)
        assert band.any() and np.abs(theirs[band] - np.array(ip.image_mean) * 255).max() < 2.0
