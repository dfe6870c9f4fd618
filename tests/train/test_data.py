"""Kohya-style folders, dataset errors, batches, caches, padded-context equivalence."""

from __future__ import annotations

import random

import pytest
import torch

from hdm_core.latents import normalize
from hdm_core.train import BucketConfig, CaptionConfig, DatasetError, DiskCache, ImageFolderData, LatentData, scan_image_folder
from hdm_core.train.batching import BatchStream, check_dataset_size, epoch_batches
from hdm_core.train.data import collate_contexts, load_image


def test_scan_reads_captions_and_repeat_folders(tmp_path, si):
    si.write_image_folder(tmp_path, [(64, 64), (96, 64)])
    si.write_image_folder(tmp_path / "3_character", [(64, 96)], seed=1)
    (tmp_path / "notes").mkdir()  # not N_name: ignored
    (tmp_path / ".cache").mkdir()
    records = scan_image_folder(tmp_path)
    assert [(r.path.parent.name, r.repeats, r.width, r.height) for r in records] == [
        (tmp_path.name, 1, 64, 64), (tmp_path.name, 1, 96, 64), ("3_character", 3, 64, 96),
    ]  # fmt: skip
    assert records[0].caption.startswith("1girl ||| ")


def test_dataset_errors_name_the_problem_and_the_fix(tmp_path, si):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="holds no images.*same-name .txt captions"):
        scan_image_folder(empty)
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_image_folder(f)

    bad = tmp_path / "bad"
    si.write_image_folder(bad, [(64, 64)])
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (bad / "broken.txt").write_text("tag")
    with pytest.raises(DatasetError, match=r"broken\.png: cannot read this image .*remove it or replace it"):
        scan_image_folder(bad)

    nocap = tmp_path / "nocap"
    si.write_image_folder(nocap, [(64, 64), (64, 64), (64, 64)])
    (nocap / "img001.txt").unlink()
    (nocap / "img002.txt").unlink()
    with pytest.raises(DatasetError, match=r"2 of 3 images .* have no \.txt caption \(e\.g\. img001\.png, img002\.png\).*missing_captions = \"empty\""):
        scan_image_folder(nocap)
    records = scan_image_folder(nocap, missing_captions="empty")
    assert [r.caption == "" for r in records] == [False, True, True]


def test_too_small_datasets_and_unfillable_buckets(latent_data):
    with pytest.raises(DatasetError, match=r"too small: 4 images \(4 samples with repeats\) cannot fill one batch of 6"):
        check_dataset_size(latent_data, 6)
    mixed = LatentData([torch.zeros(4, 8, 8), torch.zeros(4, 8, 12)], [torch.zeros(1, 16)] * 2)
    with pytest.raises(DatasetError, match="no aspect-ratio bucket holds a full batch of 2.*square crop mode"):
        check_dataset_size(mixed, 2)
    assert check_dataset_size(LatentData([torch.zeros(4, 8, 8)] * 2, [torch.zeros(1, 16)] * 2, repeats=[3, 2]), 2) == 2


def test_epochs_repeat_group_by_bucket_and_are_reproducible():
    lat = [torch.zeros(4, 8, 8)] * 3 + [torch.zeros(4, 8, 12)] * 2
    data = LatentData(lat, [torch.zeros(1, 16)] * 5, repeats=[2, 1, 1, 1, 1])
    batches = epoch_batches(data, 0, seed=1, global_batch=2)
    assert len(batches) == 3  # bucket 8x8: 4 samples → 2 batches, 8x12: 2 → 1
    for b in batches:
        assert len({data.bucket(i) for i in b}) == 1
    assert epoch_batches(data, 0, 1, 2) == batches
    assert any(epoch_batches(data, e, 1, 2) != batches for e in range(1, 5))
    stream = BatchStream(data, 1, 2)
    assert stream.per_epoch == 3 and stream[4] == epoch_batches(data, 1, 1, 2)[1] and stream.epoch_of(4) == 1


def test_image_folder_batches_and_latent_cache(tmp_path, si):
    si.write_image_folder(tmp_path / "ds", [(64, 64), (80, 64), (64, 64)])
    records = scan_image_folder(tmp_path / "ds")
    vae, te = si.TinyVAE(), si.TinyTextEncoder()
    cache = DiskCache(tmp_path / "cache")
    data = ImageFolderData(
        records, image_encoder=vae, text_encoder=te, buckets=BucketConfig(resolution=64),
        captions=CaptionConfig(shuffle_tags=True), cache=cache, cache_latents=True, cache_text=True,
    )  # fmt: skip
    assert data.bucket(0) == (8, 8) and data.bucket(1) == data.bucket(0)  # 80x64 → the 64x64 bucket (max_aspect 2, area 64²)
    rngs = [random.Random(1), random.Random(2)]
    batch = data.batch([0, 2], rngs)
    assert batch.latents.shape == (2, 4, 8, 8)
    assert batch.pos_map.shape == (2, 64, 2) and batch.addon_info.shape == (2, 1)
    assert batch.ctx.shape == (2, 4, 16) and batch.ctx_mask is None  # 1 keep tag + 3 tags each
    assert batch.captions[0].startswith("1girl, ")
    pixels = load_image(records[0].path, data.crop_plan(0, rngs[0]))[None]
    assert torch.allclose(batch.latents[0], normalize(vae.encode(pixels))[0], atol=1e-5)
    calls = vae.calls
    again = data.batch([0, 2], [random.Random(5), random.Random(6)])  # other rng: same crop (cached latents)
    assert vae.calls == calls and torch.equal(again.latents, batch.latents)
    files = list((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    assert len(files) == 2
    files[0].write_bytes(b"damaged")
    data.batch([0, 2], rngs)  # a damaged entry is re-encoded, not trusted
    assert vae.calls == calls + 1


def test_caches_need_encoder_identity(tmp_path, si):
    si.write_image_folder(tmp_path / "ds", [(64, 64)])
    records = scan_image_folder(tmp_path / "ds")
    with pytest.raises(DatasetError, match="image encoder has no cache_id"):
        ImageFolderData(records, image_encoder=lambda x: x, text_encoder=None, cache=DiskCache(tmp_path / "c"), cache_latents=True)
    data = ImageFolderData(records, image_encoder=None, text_encoder=si.TinyTextEncoder(), buckets=BucketConfig(resolution=64))
    with pytest.raises(DatasetError, match="no cached latent and no VAE"):
        data.batch([0], [random.Random(0)])


def test_precache_fills_latents_and_fixed_captions(tmp_path, si):
    si.write_image_folder(tmp_path / "ds", [(64, 64), (64, 64)])
    records = scan_image_folder(tmp_path / "ds")
    vae, te = si.TinyVAE(), si.TinyTextEncoder()
    make = lambda: ImageFolderData(  # noqa: E731
        records, image_encoder=vae, text_encoder=te, buckets=BucketConfig(resolution=64),
        captions=CaptionConfig(shuffle_tags=False), cache=DiskCache(tmp_path / "c"), cache_latents=True, cache_text=True,
    )  # fmt: skip
    data = make()
    data.image_encoder = _Counting(vae)
    data.text_encoder = _Counting(te)
    data.precache()
    assert data.image_encoder.n == 2 and data.text_encoder.n == 2
    fresh = make()
    fresh.image_encoder, fresh.text_encoder = _Counting(vae), _Counting(te)
    fresh.batch([0, 1], [random.Random(0), random.Random(1)])
    assert fresh.image_encoder.n == 0 and fresh.text_encoder.n == 0


class _Counting:
    def __init__(self, enc):
        self.enc, self.n, self.cache_id = enc, 0, enc.cache_id

    def __call__(self, x):
        self.n += 1
        return self.enc.encode(x)


def test_padded_contexts_with_a_mask_equal_each_sample_alone(tiny_model):
    gen = torch.Generator().manual_seed(3)
    contexts = [torch.randn(2, 16, generator=gen), torch.randn(5, 16, generator=gen), torch.zeros(0, 16)]
    ctx, mask = collate_contexts(contexts)
    assert ctx.shape == (3, 5, 16) and mask.tolist()[0] == [True, True, False, False, False]
    x = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        together = tiny_model(x, t, ctx, ctx_mask=mask)
        alone = torch.cat([tiny_model(x[i : i + 1], t[i : i + 1], contexts[i][None]) for i in range(3)])
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-4)  # masked vs unpadded SDPA: float noise only
    same, no_mask = collate_contexts([torch.zeros(3, 16), torch.ones(3, 16)])
    assert no_mask is None and same.shape == (2, 3, 16)


def test_latent_data_validates_its_inputs():
    with pytest.raises(DatasetError, match="got 2 latents but 1 text contexts"):
        LatentData([torch.zeros(4, 8, 8)] * 2, [torch.zeros(1, 16)])
    with pytest.raises(DatasetError, match=r"latent 0 has shape \[3, 8, 8\]"):
        LatentData([torch.zeros(3, 8, 8)], [torch.zeros(1, 16)])
    with pytest.raises(DatasetError, match="sides must be even"):
        LatentData([torch.zeros(4, 7, 8)], [torch.zeros(1, 16)])
    with pytest.raises(DatasetError, match="no latents"):
        LatentData([], [])


class _NoisyVAE:
    """TinyVAE plus seeded per-image noise: a stochastic encoder like VAE posterior sampling."""

    stochastic = True

    def __init__(self, vae):
        self.vae, self.cache_id, self.seen = vae, "noisy-" + vae.cache_id, []

    def __call__(self, pixels, seeds):
        assert len(seeds) == pixels.shape[0]
        self.seen.append(list(seeds))
        noise = torch.stack([torch.randn(4, *pixels.shape[-2:], generator=torch.Generator().manual_seed(s))[:, ::8, ::8] for s in seeds])
        return self.vae.encode(pixels) + noise


def test_stochastic_encoders_get_reproducible_per_image_seeds(tmp_path, si):
    si.write_image_folder(tmp_path / "ds", [(64, 64), (64, 64), (64, 64)])
    records = scan_image_folder(tmp_path / "ds")

    def make(cache_latents=False, cache=None):
        return ImageFolderData(
            records, image_encoder=_NoisyVAE(si.TinyVAE()), text_encoder=si.TinyTextEncoder(),
            buckets=BucketConfig(resolution=64), cache=cache, cache_latents=cache_latents, seed=3,
        )  # fmt: skip

    data = make()
    a = data.batch([0, 1], [random.Random(1), random.Random(2)])
    b = data.batch([1, 2, 0], [random.Random(2), random.Random(7), random.Random(1)])  # other batch, same per-sample rngs
    torch.testing.assert_close(b.latents[2], a.latents[0], rtol=0, atol=0)
    torch.testing.assert_close(b.latents[0], a.latents[1], rtol=0, atol=0)
    c = data.batch([0], [random.Random(9)])  # another visit draws another sample
    assert not torch.allclose(c.latents[0], a.latents[0])
    assert data.image_encoder.seen[0] != data.image_encoder.seen[2][:1]

    cached = make(True, DiskCache(tmp_path / "c1"))
    first = cached.batch([0, 1], [random.Random(1), random.Random(2)])
    again = cached.batch([0, 1], [random.Random(5), random.Random(6)])  # served from the cache
    assert len(cached.image_encoder.seen) == 1 and torch.equal(first.latents, again.latents)
    fresh = make(True, DiskCache(tmp_path / "c2"))  # an empty cache draws the very same samples
    fresh.precache()
    torch.testing.assert_close(fresh.batch([0, 1], [random.Random(8), random.Random(8)]).latents, first.latents, rtol=0, atol=0)


def test_encode_all_encodes_each_image_and_caption_once(tmp_path, si):
    """One crop per image (the latent cache's rule), captions as written, equal captions encoded once."""
    from hdm_core.train.buckets import crop_positions

    si.write_image_folder(tmp_path / "ds", [(64, 64), (96, 64), (64, 64)])
    si.write_image_folder(tmp_path / "ds" / "2_more", [(64, 80)], seed=3)
    (tmp_path / "ds" / "img002.txt").write_text("1girl ||| smile %% sky")
    (tmp_path / "ds" / "2_more" / "img000.txt").write_text("1girl ||| smile %% sky")
    records = scan_image_folder(tmp_path / "ds")
    vae, te = _Counting(si.TinyVAE()), _Counting(si.TinyTextEncoder())
    data = ImageFolderData(
        records, image_encoder=vae, text_encoder=te, buckets=BucketConfig(mode="square", resolution=48),
        captions=CaptionConfig(shuffle_tags=False), seed=5,
    )  # fmt: skip
    seen = []
    encoded = data.encode_all(batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 4), (4, 4)] and vae.n == 2  # one size (48x48 squares): two chunks of two
    assert te.n == 2  # 3 distinct captions in chunks of 2
    assert len(encoded) == 4 and [encoded.repeats(i) for i in range(4)] == [1, 1, 1, 2]
    assert encoded.captions[2] == encoded.captions[3] == "1girl, smile, sky"
    assert torch.equal(encoded.contexts[2], encoded.contexts[3])
    for i, rec in enumerate(records):
        plan = data.crop_plan(i, data._fixed_crop_rng(i))
        ref = normalize(si.TinyVAE().encode(load_image(rec.path, plan)[None]))[0]
        torch.testing.assert_close(encoded.latents[i], ref, rtol=0, atol=1e-6)
        assert torch.equal(encoded.pos_maps[i], crop_positions(plan))
        assert encoded.addon[i] == pytest.approx(plan.addon_info)
    assert records[1].width == 96 and encoded.addon[1] == pytest.approx(torch.tensor(96 / 64).log().item(), abs=0.02)
    # the crop depends on the seed (square crops of a 96x64 image can start anywhere along x)
    lefts = set()
    for seed in range(8):
        d = ImageFolderData(records, image_encoder=None, text_encoder=None, buckets=data.bucket_cfg, seed=seed)
        lefts.add(d.crop_plan(1, d._fixed_crop_rng(1)).left)
    assert len(lefts) > 1


def test_encode_all_refuses_caption_augmentation_and_in_memory_images_match_files(tmp_path, si):
    from PIL import Image

    from hdm_core.train.data import image_records

    paths = si.write_image_folder(tmp_path / "ds", [(64, 64), (64, 48)])
    records = scan_image_folder(tmp_path / "ds")
    with pytest.raises(DatasetError, match="caption augmentation"):
        ImageFolderData(records, image_encoder=si.TinyVAE(), text_encoder=si.TinyTextEncoder()).encode_all()
    kw = dict(image_encoder=si.TinyVAE(), text_encoder=si.TinyTextEncoder(), buckets=BucketConfig(resolution=64),
              captions=CaptionConfig(shuffle_tags=False))
    from_files = ImageFolderData(records, **kw).encode_all()
    images = [Image.open(p).convert("RGB") for p in paths]
    in_memory = image_records(images, [r.caption for r in records])
    assert in_memory[1].path.name == "<image 1>" and (in_memory[1].width, in_memory[1].height) == (64, 48)
    from_memory = ImageFolderData(in_memory, **kw).encode_all()
    for a, b in zip(from_files.latents + from_files.contexts + from_files.pos_maps, from_memory.latents + from_memory.contexts + from_memory.pos_maps):
        assert torch.equal(a, b)
    with pytest.raises(DatasetError, match="got 2 images but 1 captions"):
        image_records(images, ["x"])
    with pytest.raises(DatasetError, match="in-memory images cannot use the latent cache"):
        ImageFolderData(in_memory, cache=DiskCache(tmp_path / "c"), cache_latents=True, **{**kw, "image_encoder": si.TinyVAE()})
    # a custom latent normalisation (ComfyUI: the model's latent_format.process_in) is applied
    doubled = ImageFolderData(records, normalize_latents=lambda z: 2 * normalize(z), **kw).encode_all()
    assert torch.allclose(doubled.latents[0], 2 * from_files.latents[0])
