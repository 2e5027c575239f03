"""Tiny checkpoints: stock loading and a forward pass per architecture, determinism, shapes."""

import hashlib

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from lf_ext.tiny.checkpoint import ARCHS, build_checkpoint


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_loads_through_stock_from_pretrained_and_runs(tiny_dir, arch):
    path = tiny_dir(arch)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == arch
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (200, 150), (200, 30, 30))], text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(logits).all()
    # spare embedding rows past the tokenizer, as on real checkpoints (new tokens land there)
    assert model.get_input_embeddings().num_embeddings > len(processor.tokenizer)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build_checkpoint("qwen2_vl", tmp_path / "a", seed=3)
    b = build_checkpoint("qwen2_vl", tmp_path / "b", seed=3)
    c = build_checkpoint("qwen2_vl", tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert _sha(a / name) == _sha(b / name), name
    assert _sha(a / "model.safetensors") != _sha(c / "model.safetensors")


def test_unknown_arch_and_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="Valid: qwen2_vl, qwen2_5_vl, llava"):
        build_checkpoint("qwen3_vl", tmp_path)
    with pytest.raises(ValueError, match="Valid: tiny"):
        build_checkpoint("llava", tmp_path, shape="2b")


def test_2b_shape_has_qwen2_vl_2b_dimensions():
    from lf_ext.tiny.checkpoint import qwen2_vl_config
    from lf_ext.tiny.tokenizer import qwen_tokenizer

    config = qwen2_vl_config(qwen_tokenizer(""), "2b")
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert 2.1e9 < params < 2.3e9  # Qwen2-VL-2B has 2.21B parameters
    assert config.text_config.hidden_size == 1536 and config.vision_config.depth == 32


def test_config_roundtrip_keeps_special_token_ids(tiny_dir):
    path = tiny_dir("qwen2_vl")
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
