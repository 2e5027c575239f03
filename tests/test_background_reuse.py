"""Background reuse in the model (DESIGN §3 invariants 3 and 4): exact hits, no wrong reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgobj_helpers import encode, load_for_inference, masked_dataset, unit_labels
from lf_ext.cache import BackgroundCache
from lf_ext.families import family_of
from lf_ext.inference.reuse import BG_TOKENS, BackgroundReuse
from lf_ext.layout import LAYOUT_KEY, Group, ImageLayout

ARCHS = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tiny_dir, tmp_path_factory):
    data = masked_dataset(tmp_path_factory.mktemp(f"reuse_{request.param}"), count=4)
    # one image whose background differs (a bright stripe in the background region)
    pixels = np.asarray(Image.open(data / "img0.png")).copy()
    pixels[:20, :60] = 255 - pixels[:20, :60]
    Image.fromarray(pixels).save(data / "changed_bg.png")
    pixels[:20, :60] = 0  # the same region changes again (a clock ticking outside the object)
    Image.fromarray(pixels).save(data / "changed_again.png")
    pixels[:84] = 255 - pixels[:84]  # the top half changes: most of the background
    Image.fromarray(pixels).save(data / "changed_half.png")
    tokenizer_module, template, model = load_for_inference(tiny_dir(request.param), data, bgobj_prefusion_layers=1,
                                                           bgobj_split_projector=True)  # fmt: skip
    with torch.no_grad():  # open the prefusion gate so the prefusion KV matters
        model.model.visual.bgobj.prefusion.gates.fill_(0.7)
    pixels = family_of(model).pixel_units(tokenizer_module["processor"].image_processor)
    return data, tokenizer_module, template, model, pixels


def _inputs(loaded, name):
    data, tokenizer_module, template, _, _ = loaded
    ids, inputs = encode(tokenizer_module, template, [str(data / name)])
    return ids, inputs["pixel_values"], ImageLayout.unpack(inputs[LAYOUT_KEY])


def _labels(layout: ImageLayout) -> torch.Tensor:
    return layout.object_labels(0).reshape(-1).long()


def _reuse(loaded, refine=True, **cache_args):
    model = loaded[3]
    return BackgroundReuse(model, family_of(model), BackgroundCache(1 << 30, **cache_args), loaded[4], refine=refine)


def test_pixel_units_are_the_resized_image(loaded):
    data, tokenizer_module, *_ = loaded
    _, pixel_values, layout = _inputs(loaded, "img1.png")
    units = loaded[4].units(pixel_values, layout, 0)[0]
    rows, cols = units.shape[:2]
    resized = np.asarray(Image.open(data / "img1.png").convert("RGB").resize((cols * 28, rows * 28), Image.BICUBIC))
    as_image = units.transpose(0, 2, 1, 3, 4).reshape(rows * 28, cols * 28, 3)
    assert np.abs(as_image.astype(int) - resized.astype(int)).mean() < 2.0  # same picture, up to resize rounding


def test_object_only_encoding_equals_the_object_rows(loaded):
    model = loaded[3]
    _, pixel_values, layout = _inputs(loaded, "img1.png")
    family = family_of(model)
    full = family.encode(model, pixel_values, layout)
    objects = family.encode(model, pixel_values, layout, groups=(Group.OBJECT,))
    n_obj = layout.n_object(0)
    assert 0 < n_obj < layout.sizes[0]
    torch.testing.assert_close(objects, full[-n_obj:], rtol=0, atol=1e-5)


def test_hit_logits_equal_recompute(loaded):
    """Invariant 3: a hit equals recomputing the layout from the cached background tokens + new object tokens."""
    model = loaded[3]
    family = family_of(model)
    reuse = _reuse(loaded)
    first = reuse.prefill(*_inputs(loaded, "img0.png"))
    assert first.outcome.kind == "miss" and first.outcome.inserted
    ids, pixel_values, layout = _inputs(loaded, "img1.png")
    hit = reuse.prefill(ids, pixel_values, layout)
    assert hit.outcome.kind == "hit" and hit.outcome.entry_id == first.outcome.entry_id
    assert hit.outcome.max_unit_distance == 0.0  # the test images share their background exactly

    # recompute without the cache: cached background tokens + freshly encoded object tokens, one full forward
    (entry_id,) = reuse.cache.entry_ids()
    prefix = ids[0, : int((ids[0] == reuse.tokens.bg_start).nonzero()) + 1]
    units = loaded[4].units(pixel_values, layout, 0)[0]
    cached_bg = reuse.cache.lookup(reuse._context_key(prefix, units.shape[:2]), units).payload[BG_TOKENS]
    objects = family.encode(model, pixel_values, hit.layout)
    features = torch.cat([cached_bg, objects[-hit.layout.n_object(0) :]])
    positions = family.positions(model, hit.input_ids, hit.layout)
    with torch.no_grad():
        hidden = reuse._llm(reuse._embed(hit.input_ids, features), positions, None)
        recompute = model.lm_head(hidden[:, -1]).float()
    torch.testing.assert_close(hit.logits, recompute, rtol=0, atol=1e-5)

    # and the model's own forward (no cache at all) on the new image with the hit's layout agrees too
    with torch.no_grad():
        out = model(input_ids=hit.input_ids, pixel_values=pixel_values, bgobj_layout=hit.layout.pack(), position_ids=positions)
    torch.testing.assert_close(hit.logits, out.logits[:, -1].float(), rtol=0, atol=1e-5)


def test_partial_prefill_then_last_token_matches(loaded):
    """Prefill up to the last token, then feed it through the cache: same next-token logits as one full prefill."""
    model = loaded[3]
    reuse = _reuse(loaded)
    reuse.prefill(*_inputs(loaded, "img0.png"))
    ids, pixel_values, layout = _inputs(loaded, "img2.png")
    full = reuse.prefill(ids, pixel_values, layout, use_cache=False)
    part = reuse.prefill(ids, pixel_values, layout, upto=ids.shape[1] - 1)
    assert part.outcome.kind == "hit"
    with torch.no_grad():
        out = model(input_ids=part.input_ids[:, -1:], past_key_values=part.past_key_values, use_cache=True,
                    position_ids=part.position_ids[..., -1:])  # fmt: skip
    torch.testing.assert_close(out.logits[:, -1].float(), full.logits, rtol=0, atol=1e-5)


def test_different_background_is_never_served(loaded):
    """Invariant 4: a background that differs beyond the threshold is a rejection and is recomputed."""
    reuse = _reuse(loaded, refine=False)
    reuse.prefill(*_inputs(loaded, "img0.png"))
    ids, pixel_values, layout = _inputs(loaded, "changed_bg.png")
    result = reuse.prefill(ids, pixel_values, layout)
    assert result.outcome.kind == "rejection"
    fresh = reuse.prefill(ids, pixel_values, layout, use_cache=False)
    torch.testing.assert_close(result.logits, fresh.logits, rtol=0, atol=1e-6)
    stats = reuse.cache.stats()
    assert stats["hits"] == 0 and stats["rejections"] == 1 and stats["entries"] == 2


def test_rejection_refines_to_the_shared_background(loaded):
    """A region outside the object that changes (the stripe) rejects once; the request is answered with
    its own background minus the units that failed verification against the entry, which is cached and
    serves the next change of the stripe. Every answer equals a fresh computation of the layout it used."""
    reuse = _reuse(loaded)
    _, first_pixels, first_layout = _inputs(loaded, "img0.png")
    reuse.prefill(*_inputs(loaded, "img0.png"))
    ids, pixel_values, layout = _inputs(loaded, "changed_bg.png")
    refined = reuse.prefill(ids, pixel_values, layout)
    assert refined.outcome.kind == "rejection" and refined.outcome.refined and refined.outcome.inserted

    before = loaded[4].units(first_pixels, first_layout, 0)[0].astype(int)
    after = loaded[4].units(pixel_values, layout, 0)[0].astype(int)
    changed = np.abs(before - after).reshape(*before.shape[:2], -1).mean(-1) > 4.0  # the cache's default threshold
    entry_object = _labels(first_layout).view(changed.shape).bool().numpy()  # outside the entry's B
    own = _labels(layout).view(changed.shape).bool().numpy()  # no mask for this image: all background
    assert changed.any() and entry_object.any() and not (changed & entry_object).any()
    # object = own object + the entry's background units that changed; the entry's own object units, background
    # in this frame, stay background (computed from this frame's pixels)
    np.testing.assert_array_equal(refined.unit_labels.view(changed.shape).bool().numpy(), own | (changed & ~entry_object))
    fresh = reuse.prefill(refined.input_ids, pixel_values, refined.layout, use_cache=False)
    torch.testing.assert_close(refined.logits, fresh.logits, rtol=0, atol=1e-6)

    ids, pixel_values, layout = _inputs(loaded, "changed_again.png")
    hit = reuse.prefill(ids, pixel_values, layout)
    assert hit.outcome.kind == "hit" and hit.outcome.entry_id == refined.outcome.entry_id
    fresh = reuse.prefill(hit.input_ids, pixel_values, hit.layout, use_cache=False)
    torch.testing.assert_close(hit.logits, fresh.logits, rtol=0, atol=1e-5)

    plain = _reuse(loaded, refine=False)
    kinds = [plain.prefill(*_inputs(loaded, name)).outcome.kind for name in ("img0.png", "changed_bg.png", "changed_again.png")]
    assert kinds == ["miss", "rejection", "rejection"]


def test_refinement_keeps_at_least_min_coverage(loaded):
    """A refined background below ``min_coverage`` is not used: the rejection keeps the request's own split."""
    reuse = _reuse(loaded, min_coverage=0.8)  # img0's B: 39 of 48 units; changed_half minus what changed: < 30
    assert reuse.prefill(*_inputs(loaded, "img0.png")).outcome.inserted
    ids, pixel_values, layout = _inputs(loaded, "changed_half.png")
    result = reuse.prefill(ids, pixel_values, layout)
    assert result.outcome.kind == "rejection" and not result.outcome.refined
    assert torch.equal(result.unit_labels, _labels(layout))


def test_generate_with_cache_matches_stock_generate(loaded):
    """``model.generate`` through the installed cache answers exactly like without it, miss and hit."""
    from lf_ext.inference.runtime import BgObjRuntime, attach_runtime

    data, tokenizer_module, template, model, pixels = loaded
    answers = {}
    for cached in (False, True):
        runtime = attach_runtime(model, BgObjRuntime(model, family_of(model), _reuse(loaded) if cached else None))
        for name in ("img0.png", "img1.png", "img3.png"):
            ids, inputs = encode(tokenizer_module, template, [str(data / name)])
            tokens = (ids[0] == model.config.image_token_id).long()[None]
            out = model.generate(inputs=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=tokens,
                                 max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 **inputs)  # fmt: skip
            answers[cached, name] = out.sequences[0, ids.shape[1] :].tolist(), torch.stack(out.scores).float()
    stats = runtime.stats()
    assert stats["hits"] == 2 and stats["misses"] == 1
    for name in ("img0.png", "img1.png", "img3.png"):
        assert answers[True, name][0] == answers[False, name][0], name
        torch.testing.assert_close(answers[True, name][1], answers[False, name][1], rtol=0, atol=1e-4)


def test_hit_from_the_disk_tier_is_exact(loaded, tmp_path):
    """An entry evicted to the safetensors disk tier (KV, prefusion KV, background tokens) serves the
    same logits as the in-memory hit; a corrupted file is a miss, never a wrong answer."""
    memory = _reuse(loaded)
    memory.prefill(*_inputs(loaded, "img0.png"))
    expected = memory.prefill(*_inputs(loaded, "img1.png"))
    one_entry = memory.cache.stats()["bytes"]
    small = BackgroundReuse(loaded[3], family_of(loaded[3]), BackgroundCache(int(one_entry * 1.5), disk_dir=tmp_path / "disk"),
                            loaded[4], refine=False)  # refinement would serve img1 from changed_bg's entry in memory  # fmt: skip
    small.prefill(*_inputs(loaded, "img0.png"))
    small.prefill(*_inputs(loaded, "changed_bg.png"))  # a second background pushes the first to disk
    assert small.cache.stats()["disk_entries"] == 1
    from_disk = small.prefill(*_inputs(loaded, "img1.png"))
    assert from_disk.outcome.kind == "hit" and small.cache.stats()["disk_hits"] == 1
    torch.testing.assert_close(from_disk.logits, expected.logits, rtol=0, atol=1e-6)

    small.prefill(*_inputs(loaded, "changed_bg.png"))  # evicts img0's entry to disk again (promotion swapped them)
    for path in (tmp_path / "disk").rglob("*.safetensors"):
        path.write_bytes(path.read_bytes()[:-64] + b"\0" * 64)  # corrupt the tail
    again = small.prefill(*_inputs(loaded, "img2.png"))
    assert again.outcome.kind in ("miss", "rejection") and small.cache.stats()["disk_corrupt"] >= 1
    fresh = small.prefill(*_inputs(loaded, "img2.png"), use_cache=False)
    torch.testing.assert_close(again.logits, fresh.logits, rtol=0, atol=1e-6)
