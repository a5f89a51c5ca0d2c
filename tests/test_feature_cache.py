"""The frozen-backbone feature cache: keys, shards and resuming, training from it, one backbone pass for many heads."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from roadwork_testing import metadata_inputs, pixel_inputs, tiny_config

from data_collator import (
    RoadworkDataCollator,
    RoadworkViewAugmenter,
    SyntheticDatasetConfig,
    build_vocabularies,
    ensure_synthetic_dataset,
    load_roadwork_splits,
)
from data_collator.collator import SEED_STREAM_TRANSFORM, example_seed
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
from roadwork_training.build import condition_datasets
from roadwork_training.feature_cache import (
    CachePass,
    RoadworkFeatureCache,
    RoadworkFeatureExtractor,
    RoadworkSharedBackbone,
    backbone_fingerprint,
    predict_heads,
    shard_ranges,
    shards_for_process,
)


SEED = 7


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_data")
    source = ensure_synthetic_dataset(root / "synthetic", SyntheticDatasetConfig(num_train=10, num_test=2))
    return load_roadwork_splits(str(source))["train"]


def _model(train_split, seed: int = 0, **overrides) -> RoadworkForImageClassification:
    torch.manual_seed(seed)
    config = tiny_config(**{**build_vocabularies(train_split), "use_segmentation": False, **overrides})
    return RoadworkForImageClassification(config).eval()


@pytest.fixture(scope="module")
def model(train_split):
    return _model(train_split)


@pytest.fixture(scope="module")
def processor(model):
    return RoadworkImageProcessor.from_model_config(model.config)


class _CountingBackbone:
    """Counts the images that reach `extract_view_features` (monkeypatched onto the RoadworkModel)."""

    def __init__(self, model, monkeypatch):
        self.images = 0
        original = model.roadwork.extract_view_features

        def counting(pixel_values):
            self.images += pixel_values.shape[0]
            return original(pixel_values)

        monkeypatch.setattr(model.roadwork, "extract_view_features", counting)


# --- sharding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_rows,shard_size", [(0, 4), (1, 4), (10, 4), (12, 4), (7, 1)])
def test_shard_ranges_cover_every_row_once(num_rows, shard_size):
    ranges = shard_ranges(num_rows, shard_size)
    rows = [r for start, stop in ranges for r in range(start, stop)]
    assert rows == list(range(num_rows))
    assert all(0 < stop - start <= shard_size for start, stop in ranges)


@pytest.mark.parametrize("num_shards,num_processes", [(1, 1), (5, 2), (7, 3), (2, 4)])
def test_shards_for_process_split_shards_exactly_once(num_shards, num_processes):
    assigned = [shards_for_process(num_shards, p, num_processes) for p in range(num_processes)]
    flat = sorted(s for shards in assigned for s in shards)
    assert flat == list(range(num_shards))
    sizes = [len(shards) for shards in assigned]
    assert max(sizes) - min(sizes) <= 1  # balanced
    with pytest.raises(ValueError, match="process_index 3"):
        shards_for_process(4, 3, 3)


# --- extraction, reuse, keys, resume ------------------------------------------------------------------------


def test_extraction_is_reused_and_resumes_after_an_interruption(train_split, model, processor, tmp_path, monkeypatch):
    counter = _CountingBackbone(model, monkeypatch)
    extractor = RoadworkFeatureExtractor(model, processor, tmp_path, batch_size=3, shard_size=4, progress=False)
    first = extractor.extract(train_split, CachePass.clean())
    assert counter.images == len(train_split) == len(first) == 10
    assert first.features["view_features"].shape == (12, 32) and first.features["view_features"].dtype == "float16"
    assert (
        first["row"] == list(range(10)) and first["id"] == train_split["id"] and first["label"] == train_split["label"]
    )
    assert "image" not in first.column_names

    again = extractor.extract(train_split, CachePass.clean())  # a second run reads the cache
    assert counter.images == 10
    np.testing.assert_array_equal(np.asarray(again["view_features"]), np.asarray(first["view_features"]))

    # An interrupted run: the last shard (rows 8, 9) and the completion marker are missing.
    (pass_dir,) = [d for d in tmp_path.iterdir() if d.name.startswith("clean-")]
    import shutil

    shutil.rmtree(pass_dir / "shard-00002")
    (pass_dir / "info.json").unlink()
    resumed = extractor.extract(train_split, CachePass.clean())
    assert counter.images == 12  # only the missing shard's 2 images ran again
    np.testing.assert_allclose(np.asarray(resumed["view_features"]), np.asarray(first["view_features"]), atol=1e-3)

    # A changed key (another pass, another storage dtype, another backbone) builds a new folder.
    extractor.extract(train_split, CachePass.serving(SEED))
    RoadworkFeatureExtractor(model, processor, tmp_path, shard_size=4, dtype="float32", progress=False).extract(
        train_split, CachePass.clean()
    )
    other = _model(train_split, seed=1)
    RoadworkFeatureExtractor(other, processor, tmp_path, shard_size=4, progress=False).extract(
        train_split, CachePass.clean()
    )
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 4
    assert counter.images == 32  # serving and float32 ran on `model` (10 each); `other` counts on its own


def test_an_undecodable_image_stays_a_dropped_example(train_split, model, processor, tmp_path):
    rows = train_split.select(range(3)).to_list()
    rows[1]["image"] = {"bytes": b"not a jpeg", "path": None}
    split = datasets.Dataset.from_list(rows)
    table = RoadworkFeatureExtractor(model, processor, tmp_path, progress=False).extract(split, CachePass.clean())
    assert table["has_features"] == [True, False, True]
    cache = RoadworkFeatureCache(RoadworkFeatureExtractor(model, processor, tmp_path, progress=False))
    dataset = cache.condition_datasets(split, processor, model.config, SEED)["metadata"]
    assert dataset[1].get("corrupt") is True and "view_features" in dataset[0]


# --- training and evaluation from the cache -----------------------------------------------------------------


def _logits(model, dataset, indices):
    collator = RoadworkDataCollator(text_embed_dim=model.config.text_embed_dim)
    batch = collator([dataset[i] for i in indices])
    with torch.no_grad():
        return model(**batch).logits, batch


@pytest.mark.parametrize("dtype,tolerance", [("float16", 5e-2), ("float32", 1e-5)])
def test_cached_and_end_to_end_forward_agree(train_split, processor, tmp_path, dtype, tolerance):
    """Every condition: logits from cached `view_features` equal logits from `pixel_values` within `tolerance`, as
    both atol and rtol. fp32 storage: 1e-5. fp16 storage keeps about 3 significant digits per feature; through this
    deliberately large-weight head (logits of magnitude ~2-5) that moved a logit by up to 0.045 (2.2% relative) in
    the measured run, so the stated tolerance is 5e-2."""
    model = _model(train_split, initializer_range=0.5, linear_init="normal")  # large weights: logits far from 0
    extractor = RoadworkFeatureExtractor(model, processor, tmp_path, dtype=dtype, progress=False)
    cached = RoadworkFeatureCache(extractor).condition_datasets(train_split, processor, model.config, SEED)
    live = condition_datasets(train_split, processor, model.config, SEED)
    for condition in live:
        from_cache, cache_batch = _logits(model, cached[condition], range(len(train_split)))
        end_to_end, live_batch = _logits(model, live[condition], range(len(train_split)))
        assert "view_features" in cache_batch and "pixel_values" in live_batch
        assert end_to_end.abs().max() > 1.0, "logits too small for the tolerance to mean anything"
        torch.testing.assert_close(from_cache, end_to_end, atol=tolerance, rtol=tolerance)
        for key in ("gps", "weather_ids", "daytime_ids", "scene_ids", "labels"):
            torch.testing.assert_close(cache_batch[key], live_batch[key], equal_nan=True)


def test_training_passes_cycle_across_epochs_and_match_live_augmentation(train_split, model, processor, tmp_path):
    augmenter = RoadworkViewAugmenter("heavy")
    cache = RoadworkFeatureCache(RoadworkFeatureExtractor(model, processor, tmp_path, progress=False), num_passes=2)
    dataset = cache.train_dataset(train_split, processor, model.config, augmenter, SEED)
    by_epoch = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        by_epoch.append(torch.stack([dataset[i]["view_features"] for i in range(4)]))
    torch.testing.assert_close(by_epoch[0], by_epoch[2])  # epoch 2 reuses pass 0
    assert (by_epoch[0] - by_epoch[1]).abs().max() > 1e-2  # pass 1 is another augmentation draw

    # Pass k holds the features of live training's epoch-k augmentation.
    live = CachePass.training(1, augmenter, SEED).dataset(train_split, processor)
    pixels = torch.stack([live[i]["pixel_values"] for i in range(4)])
    with torch.no_grad():
        expected = model.roadwork.extract_view_features(pixels)
    torch.testing.assert_close(by_epoch[1], expected, atol=2e-3, rtol=2e-3)


def test_metadata_dropout_works_per_row_from_the_cache(train_split, model, processor, tmp_path):
    cache = RoadworkFeatureCache(RoadworkFeatureExtractor(model, processor, tmp_path, progress=False))
    kept = cache.train_dataset(train_split, processor, model.config, None, SEED)
    dropped = cache.train_dataset(train_split, processor, model.config, None, SEED, metadata_dropout=1.0)
    assert sum(not np.isnan(kept[i]["gps"]).any() for i in range(len(kept))) > 0
    assert all(np.isnan(dropped[i]["gps"]).all() and dropped[i]["description"] is None for i in range(len(dropped)))


def test_keep_views_feeds_the_global_view_alone(train_split, model, processor, tmp_path):
    extractor = RoadworkFeatureExtractor(model, processor, tmp_path, progress=False)
    full = RoadworkFeatureCache(extractor).condition_datasets(train_split, processor, model.config, SEED)
    single = RoadworkFeatureCache(extractor, keep_views=[0]).condition_datasets(
        train_split, processor, model.config, SEED
    )
    assert single["serving"][0]["view_features"].shape == (1, 32)
    torch.testing.assert_close(single["serving"][0]["view_features"][0], full["serving"][0]["view_features"][0])


# --- one backbone pass for many heads -----------------------------------------------------------------------


def test_predict_heads_equals_each_heads_own_forward(train_split):
    members = [_model(train_split, seed=s) for s in range(3)]
    backbone_state = members[0].roadwork.backbone.state_dict()
    for member in members[1:]:  # ensemble members share the frozen backbone, not the head
        member.roadwork.backbone.load_state_dict(backbone_state)
    pixels = pixel_inputs(2)
    metadata = metadata_inputs(2, "mixed")
    shared = predict_heads(members[0], members, pixels, **metadata)
    assert len(shared) == 3
    for member, output in zip(members, shared):
        with torch.no_grad():
            own = member(pixel_values=pixels, **metadata)
        torch.testing.assert_close(output.logits, own.logits)
    assert not torch.allclose(shared[0].logits, shared[1].logits)  # the heads differ


def test_shared_backbone_runs_once(train_split, monkeypatch):
    members = [_model(train_split, seed=0) for _ in range(3)]
    counter = _CountingBackbone(members[0], monkeypatch)
    RoadworkSharedBackbone(members[0], members)(pixel_inputs(2))
    assert counter.images == 2


def test_heads_on_another_backbone_are_refused(train_split):
    reference = _model(train_split, seed=0)
    other = _model(train_split, seed=1)
    assert backbone_fingerprint(reference) != backbone_fingerprint(other)
    with pytest.raises(ValueError, match="head 1 was built on a different backbone"):
        predict_heads(reference, [reference, other], pixel_inputs(1))
    wider = _model(train_split, seed=0, view_size=48)
    with pytest.raises(ValueError, match="head 0 has view_size=48"):
        RoadworkSharedBackbone(reference, [wider])


def test_serving_augmentation_passes_hold_live_trainings_challenges(train_split, model, processor, tmp_path):
    """--serving_augmentation: each pass turns a seeded share of the rows into validator challenges, as live."""
    cache = RoadworkFeatureCache(RoadworkFeatureExtractor(model, processor, tmp_path, progress=False), num_passes=2)
    passes = cache.training_passes(None, SEED, serving_augmentation=0.5)
    assert [p.name for p in passes] == ["train0", "train1"]
    assert all(p.image_transform == "validator" and p.transform_probability == 0.5 for p in passes)
    assert cache.training_passes(None, SEED) == [CachePass.clean()]  # no augmentation at all: one clean pass
    plain_key = cache.extractor.pass_dir(train_split, CachePass.training(0, RoadworkViewAugmenter("light"), SEED))[0]
    mixed_key = cache.extractor.pass_dir(
        train_split, CachePass.training(0, RoadworkViewAugmenter("light"), SEED, serving_augmentation=0.5)
    )[0]
    assert plain_key != mixed_key

    dataset = cache.train_dataset(train_split, processor, model.config, None, SEED, serving_augmentation=0.5)
    dataset.set_epoch(1)
    cached = torch.stack([dataset[i]["view_features"] for i in range(len(train_split))])
    live = passes[1].dataset(train_split, processor)
    applied = []
    pixels = []
    for i in range(len(train_split)):
        pixels.append(live[i]["pixel_values"])
        applied.append(live.image_transform.applies(example_seed(SEED, 1, i, SEED_STREAM_TRANSFORM, 0)))
    assert 0 < sum(applied) < len(applied), "a 0.5 share over 10 rows should transform some rows and keep others"
    with torch.no_grad():
        expected = model.roadwork.extract_view_features(torch.stack(pixels))
    torch.testing.assert_close(cached, expected, atol=2e-3, rtol=2e-3)
    clean = cache.extractor.extract(train_split, CachePass.clean()).with_format("torch")["view_features"]
    kept = [i for i, a in enumerate(applied) if not a]
    changed = [i for i, a in enumerate(applied) if a]
    torch.testing.assert_close(cached[kept], clean[kept].float(), atol=2e-3, rtol=2e-3)
    assert (cached[changed] - clean[changed].float()).abs().amax(dim=(1, 2)).min() > 1e-2


def test_passes_of_a_masked_split_store_each_views_coverage(train_split, model, processor, tmp_path):
    """A split with seg_masks: every pass stores the live dataset's view_coverage, and training examples carry it."""
    from roadwork_training.feature_cache import cache_key

    assert "seg_masks" in train_split.column_names
    cache = RoadworkFeatureCache(RoadworkFeatureExtractor(model, processor, tmp_path, progress=False), num_passes=1)
    dataset = cache.train_dataset(train_split, processor, model.config, None, SEED, serving_augmentation=1.0)
    live = cache.training_passes(None, SEED, serving_augmentation=1.0)[0].dataset(train_split, processor)
    rows_with_masks = 0
    for i in range(len(train_split)):
        expected = live[i]["view_coverage"]
        cached = dataset[i]["view_coverage"]
        if expected is None:
            assert cached is None
            continue
        rows_with_masks += 1
        np.testing.assert_allclose(cached, expected, atol=1e-6)
    assert rows_with_masks > 0
    batch = RoadworkDataCollator()([dataset[i] for i in range(len(train_split))])
    assert batch["view_coverage"].shape == (len(train_split), 12)
    assert (batch["view_coverage"].isnan().all(dim=1).sum().item() == len(train_split) - rows_with_masks)

    # keep_views narrows the coverage like the features; a mask-free split's key and columns are as before
    single = RoadworkFeatureCache(cache.extractor, num_passes=1, keep_views=[0]).train_dataset(
        train_split, processor, model.config, None, SEED, serving_augmentation=1.0
    )
    first = next(i for i in range(len(train_split)) if dataset[i]["view_coverage"] is not None)
    np.testing.assert_allclose(single[first]["view_coverage"], dataset[first]["view_coverage"][:1])
    plain = train_split.remove_columns("seg_masks")
    _, described = cache_key(model, processor, plain, CachePass.clean())
    assert "view_coverage" not in described
    assert "view_coverage" in cache_key(model, processor, train_split, CachePass.clean())[1]
    assert "view_coverage" not in cache.extractor.extract(plain, CachePass.clean()).column_names


def test_an_image_replaced_under_the_same_id_is_extracted_again(train_split, model, processor, tmp_path):
    """The key hashes the images' bytes: same ids and labels with one other image is another pass folder."""
    from roadwork_training.feature_cache import cache_key, images_fingerprint

    rows = train_split.select(range(3)).to_list()
    split = datasets.Dataset.from_list(rows, features=train_split.features)
    swapped = [dict(row) for row in rows]
    swapped[1]["image"] = rows[2]["image"]  # same id and label, another picture
    changed = datasets.Dataset.from_list(swapped, features=train_split.features)
    assert changed["id"] == split["id"] and changed["label"] == split["label"]
    assert images_fingerprint(changed) != images_fingerprint(split)
    again = datasets.Dataset.from_list(rows, features=train_split.features)
    assert images_fingerprint(split) == images_fingerprint(again)
    # A list of rows with decoded images hashes the pixels, and agrees with itself.
    decoded = [dict(row, image=image) for row, image in zip(rows, split["image"])]
    assert images_fingerprint(decoded) == images_fingerprint(list(decoded))
    assert images_fingerprint(decoded) != images_fingerprint([decoded[0], decoded[2], decoded[1]])

    extractor = RoadworkFeatureExtractor(model, processor, tmp_path, progress=False)
    first = extractor.extract(split, CachePass.clean())
    second = extractor.extract(changed, CachePass.clean())
    assert cache_key(model, processor, split, CachePass.clean())[0] != cache_key(model, processor, changed,
                                                                                 CachePass.clean())[0]  # fmt: skip
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 2
    np.testing.assert_array_equal(np.asarray(second["view_features"][2]), np.asarray(first["view_features"][2]))
    assert not np.array_equal(np.asarray(second["view_features"][1]), np.asarray(first["view_features"][1]))
