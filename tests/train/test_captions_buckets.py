"""Caption augmentation, aspect buckets, crops and crop position maps."""

from __future__ import annotations

import math
import random

import pytest
import torch

from hdm_core.positions import axial_grid
from hdm_core.train import BucketConfig, CaptionConfig, process_caption
from hdm_core.train.buckets import crop_positions, make_buckets, nearest_bucket, plan_crop, target_size
from hdm_core.train.captions import clean_caption

CAPTION = "1girl, solo ||| smile, red eyes, long hair %% outdoors, sky"


def test_keep_tags_stay_first_and_the_rest_is_shuffled_reproducibly():
    cfg = CaptionConfig(shuffle_tags=True)
    outs = {process_caption(CAPTION, cfg, random.Random(s)) for s in range(20)}
    assert len(outs) > 3
    for out in outs:
        tags = out.split(", ")
        assert tags[:2] == ["1girl", "solo"]
        assert sorted(tags[2:]) == sorted(["smile", "red eyes", "long hair", "outdoors", "sky"])
        assert set(tags[2:5]) == {"smile", "red eyes", "long hair"}  # tags shuffle inside their group only
    assert process_caption(CAPTION, cfg, random.Random(4)) == process_caption(CAPTION, cfg, random.Random(4))
    assert clean_caption(CAPTION, cfg) == "1girl, solo, smile, red eyes, long hair, outdoors, sky"


def test_group_shuffle_tag_group_and_caption_dropout():
    cfg = CaptionConfig(shuffle_tags=False, shuffle_groups=True)
    orders = {process_caption(CAPTION, cfg, random.Random(s)) for s in range(20)}
    assert orders == {"1girl, solo, smile, red eyes, long hair, outdoors, sky", "1girl, solo, outdoors, sky, smile, red eyes, long hair"}
    all_tags = CaptionConfig(shuffle_tags=False, tag_dropout=1.0)
    assert process_caption(CAPTION, all_tags, random.Random(0)) == "1girl, solo"  # keep tags are never dropped
    groups = CaptionConfig(shuffle_tags=False, group_dropout=1.0)
    assert process_caption(CAPTION, groups, random.Random(0)) == "1girl, solo"
    half = CaptionConfig(shuffle_tags=False, tag_dropout=0.5)
    lengths = [len(process_caption(CAPTION, half, random.Random(s)).split(", ")) for s in range(200)]
    assert 2 + 5 * 0.35 < sum(lengths) / len(lengths) < 2 + 5 * 0.65
    drop = CaptionConfig(caption_dropout=0.3)
    empties = sum(process_caption(CAPTION, drop, random.Random(s)) == "" for s in range(1000))
    assert 240 < empties < 360


def test_keep_tokens_without_separator_and_whitespace():
    cfg = CaptionConfig(shuffle_tags=True, keep_tokens=2)
    for s in range(10):
        tags = process_caption("a, b,\n c, d ,e", cfg, random.Random(s)).split(", ")
        assert tags[:2] == ["a", "b"] and sorted(tags[2:]) == ["c", "d", "e"]
    assert process_caption("", CaptionConfig(), random.Random(0)) == ""
    with pytest.raises(ValueError, match="tag_dropout must be in"):
        CaptionConfig(tag_dropout=1.5)


def test_buckets_are_16px_multiples_near_the_target_area():
    buckets = make_buckets(1024, max_aspect=2.0)
    assert (1024, 1024) in buckets and (1408, 736) in buckets and (736, 1408) in buckets
    for w, h in buckets:
        assert w % 16 == 0 and h % 16 == 0
        assert w * h <= 1024 * 1024
        assert max(w / h, h / w) <= 2.0
        assert w * h >= 0.9 * 1024 * 1024
    assert nearest_bucket(1600, 900, buckets) == (1360, 768)  # 16:9 = 1.778 → 1.771
    assert nearest_bucket(500, 500, buckets) == (1024, 1024)
    assert nearest_bucket(100, 1000, buckets)[1] > nearest_bucket(100, 1000, buckets)[0]
    with pytest.raises(ValueError, match="multiple of 16"):
        BucketConfig(resolution=1000)


def test_crop_plan_covers_the_bucket_and_random_offsets_stay_inside():
    cfg = BucketConfig(resolution=256)
    size = target_size(300, 200, cfg)
    assert size == nearest_bucket(300, 200, make_buckets(256))
    for s in range(20):
        plan = plan_crop(300, 200, size, cfg, random.Random(s))
        rw, rh = plan.resized
        assert rw >= size[0] and rh >= size[1]
        assert 0 <= plan.left <= rw - size[0] and 0 <= plan.top <= rh - size[1]
        assert math.isclose(plan.addon_info, math.log(rw / rh))
    centred = plan_crop(300, 200, size, BucketConfig(resolution=256, random_crop=False), random.Random(0))
    assert centred.left == (centred.resized[0] - size[0]) // 2


def test_square_mode_is_hdms_shifted_square_crop():
    cfg = BucketConfig(mode="square", resolution=128)
    assert target_size(400, 200, cfg) == (128, 128)
    offsets = {plan_crop(400, 200, (128, 128), cfg, random.Random(s)).left for s in range(30)}
    plan = plan_crop(400, 200, (128, 128), cfg, random.Random(0))
    assert plan.resized == (256, 128) and plan.top == 0
    assert len(offsets) > 5 and max(offsets) <= 128
    assert math.isclose(plan.addon_info, math.log(2.0))


def test_crop_position_maps_encode_the_crop_window():
    cfg = BucketConfig(resolution=128, random_crop=False)
    # uncropped: the latent map is exactly the aspect-aware grid at latent resolution
    full = plan_crop(256, 128, (256, 128), cfg, None)
    assert full.resized == (256, 128) and (full.left, full.top) == (0, 0)
    assert torch.allclose(crop_positions(full), axial_grid(16, 32), atol=1e-6)
    # the right half of a 2:1 image: x in [0, 1], y in the full image's [-0.5, 0.5]
    right = plan_crop(256, 128, (128, 128), BucketConfig(mode="square", resolution=128), random.Random(0))
    right = type(right)(right.resized, 128, 0, (128, 128))
    pos = crop_positions(right).view(16, 16, 2)
    assert torch.allclose(pos, axial_grid(16, 32).view(16, 32, 2)[:, 16:], atol=1e-6)
    assert float(pos[..., 1].min()) > 0 and float(pos[..., 0].abs().max()) < 0.5
