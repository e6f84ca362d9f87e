"""PNG layout loading, validation errors, splits, transforms and the synthetic demo data."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from torch.utils.data import BatchSampler

from cxrseg.config import AUGMENTATIONS, DataArguments
from cxrseg.data.dataset import PairTransform, load_training_data
from cxrseg.data.png_layout import index_layout
from cxrseg.data.sampling import SampleKey
from cxrseg.data.splits import load_or_make_split, make_split, save_split
from cxrseg.data.transforms import ToModelInputs, build_transforms
from cxrseg.errors import DataError, OutputError
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.synthetic import make_demo_data, synthetic_radiograph

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_pair(root, image_id, image, mask, split="train"):
    for kind, array in (("images", image), ("masks", mask)):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / kind / split / f"{image_id}.png"), array)


def small_layout(root, n=10):
    for i in range(n):
        mask = np.zeros((32, 32), np.uint8)
        if i % 3 == 0:
            mask[4:10, 4:12] = 255 if i % 2 else 1  # both 0/255 and 0/1 masks
        write_pair(root, f"img{i}", np.full((32, 32), 100, np.uint8), mask)
    return root


def test_load_training_data_columns_split_and_counts(tmp_path):
    root = small_layout(tmp_path / "data")
    data_args = DataArguments(data_dir=str(root), image_size=16, augmentation="none", val_fraction=0.3)
    data = load_training_data(data_args, PNEUMOTHORAX, tmp_path / "out/splits.json", mean=MEAN, std=STD)
    assert set(data.train.rows.column_names) >= {"image", "mask", "image_id", "is_positive"}
    assert len(data.train) + len(data.val) == 10
    assert set(data.split["train"]).isdisjoint(data.split["val"])
    assert data.pixel_counts[1] == sum(48 for i in range(10) if i % 3 == 0 and f"img{i}" in data.split["train"])
    assert data.num_pixels == len(data.train) * 32 * 32
    row = data.train[0]
    assert row["pixel_values"].shape == (3, 16, 16) and row["labels"].shape == (16, 16)
    assert set(np.unique(row["labels"].numpy())) <= {0, 1}
    # a saved split is reused
    save_split(tmp_path / "out/splits.json", data.split)
    data_args.val_fraction = 0.5
    again = load_training_data(data_args, PNEUMOTHORAX, tmp_path / "out/splits.json", mean=MEAN, std=STD)
    assert again.split == data.split


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "masks/train/img3.png").unlink(), r"No mask for .*img3\.png"),
        (lambda r: cv2.imwrite(str(r / "masks/train/img2.png"), np.zeros((16, 32), np.uint8)), r"Size mismatch.*img2"),
        (lambda r: (r / "images/train/img4.png").write_bytes(b"not a png"), r"Unreadable image .*img4\.png"),
        (
            lambda r: cv2.imwrite(str(r / "masks/train/img5.png"), np.full((32, 32), 7, np.uint8)),
            r"img5\.png has values \[7\]",
        ),
        (lambda r: shutil.rmtree(r / "images/train") or (r / "images/train").mkdir(), r"empty"),
    ],
    ids=["missing-mask", "size-mismatch", "unreadable", "bad-values", "empty-split"],
)
def test_bad_input_names_the_file(tmp_path, damage, message):
    root = small_layout(tmp_path / "data")
    damage(root)
    with pytest.raises(DataError, match=message):
        index_layout(root, "train", PNEUMOTHORAX)


def test_index_is_cached_and_invalidated(tmp_path):
    root = small_layout(tmp_path / "data")
    first = index_layout(root, "train", PNEUMOTHORAX)
    assert index_layout(root, "train", PNEUMOTHORAX) == first
    cv2.imwrite(str(root / "masks/train/img1.png"), np.full((32, 32), 255, np.uint8))
    changed = {row.image_id: row for row in index_layout(root, "train", PNEUMOTHORAX)}
    assert changed["img1"].pixel_counts == (0, 1024)


def test_cached_index_paths_follow_how_the_root_is_named(tmp_path, monkeypatch):
    """The cache written through a relative ROOT serves an absolute one (or another working directory)."""
    small_layout(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    relative = index_layout("data", "train", PNEUMOTHORAX)
    monkeypatch.chdir(tmp_path.parent)
    absolute = index_layout(tmp_path / "data", "train", PNEUMOTHORAX)
    assert [Path(row.image_path) for row in absolute] == [
        tmp_path / "data/images/train" / Path(row.image_path).name for row in relative
    ]
    assert all(Path(row.image_path).is_file() and Path(row.mask_path).is_file() for row in absolute)


def test_split_is_stratified_and_seeded():
    ids = [f"i{k}" for k in range(100)]
    positive = [k < 22 for k in range(100)]
    split = make_split(ids, positive, 0.2, seed=1)
    val_positive = sum(positive[int(i[1:])] for i in split["val"])
    assert len(split["val"]) == 20 and val_positive in (4, 5)  # natural prevalence (22%)
    assert make_split(ids, positive, 0.2, seed=1) == split


def test_saved_split_with_unknown_ids_is_an_error(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["a", "zzz"], "val": ["b"]}))
    with pytest.raises(DataError, match="zzz"):
        load_or_make_split(path, ["a", "b"], [False, True], 0.5, 0)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_pipelines_build_without_warnings(augmentation):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline = build_transforms(augmentation, 64, seed=0)
        out = pipeline(image=np.zeros((80, 80), np.uint8), mask=np.zeros((80, 80), np.uint8))
    assert out["image"].shape == (64, 64)


@pytest.mark.parametrize("augmentation", ["standard", "aggressive"])
def test_a_shape_moves_with_its_mask(augmentation):
    image = np.zeros((96, 96), np.uint8)
    image[20:50, 30:45] = 255  # a bright rectangle
    mask = (image > 0).astype(np.uint8)
    pipeline = build_transforms(augmentation, 96, seed=0)
    moved = 0
    for _ in range(20):
        out = pipeline(image=image, mask=mask)
        assert set(np.unique(out["mask"])) <= {0, 1}  # stays binary (nearest neighbour)
        bright = out["image"] > 127
        if out["mask"].any():
            # where the mask is, the image is bright; the overlap of the two shapes stays high
            overlap = (bright & (out["mask"] == 1)).sum() / max((out["mask"] == 1).sum(), 1)
            assert overlap > 0.8
        moved += not np.array_equal(out["mask"], mask)
    assert moved > 0


def test_model_inputs_are_normalised_three_channels():
    to_inputs = ToModelInputs(MEAN, STD)
    pixels = to_inputs.image(np.full((4, 4), 255, np.uint8))
    assert pixels.shape == (3, 4, 4)
    assert pixels[:, 0, 0].tolist() == pytest.approx([(1 - m) / s for m, s in zip(MEAN, STD)])


def test_synthetic_data_is_deterministic_and_realistic(tmp_path):
    a_image, a_mask = synthetic_radiograph(7, 128, positive=True)
    b_image, b_mask = synthetic_radiograph(7, 128, positive=True)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_mask, b_mask)
    assert set(np.unique(a_mask)) == {0, 255}
    # the lesion is darker than the rest of the lungs and carries no bright blob
    assert a_image[a_mask > 0].mean() < a_image.mean()
    root = make_demo_data(tmp_path / "demo", num_images=60, size=64, seed=0)
    index = index_layout(root, "train", PNEUMOTHORAX)
    positive = [row for row in index if row.is_positive]
    assert 0.1 < len(positive) / len(index) < 0.35  # ~22% like SIIM
    fractions = sorted(row.pixel_counts[1] / (64 * 64) for row in positive)
    assert fractions[0] < 0.01 < fractions[-1]  # tiny to large
    with pytest.raises(OutputError, match="already exists"):
        make_demo_data(root, num_images=1)


def test_a_saved_datasets_folder_trains_like_the_layout(tmp_path):
    from cxrseg.prepare.export import layout_to_datasetdict

    root = small_layout(tmp_path / "data")
    layout_to_datasetdict(root).save_to_disk(str(tmp_path / "saved"))
    layout_args = DataArguments(data_dir=str(root), image_size=16, augmentation="none", val_fraction=0.3)
    saved_args = dataclasses.replace(layout_args, data_dir=str(tmp_path / "saved"))
    from_layout = load_training_data(layout_args, PNEUMOTHORAX, tmp_path / "a/splits.json", mean=MEAN, std=STD)
    from_saved = load_training_data(saved_args, PNEUMOTHORAX, tmp_path / "b/splits.json", mean=MEAN, std=STD)
    assert from_saved.split == from_layout.split
    assert from_saved.pixel_counts == from_layout.pixel_counts
    assert np.array_equal(from_saved.train[0]["labels"].numpy(), from_layout.train[0]["labels"].numpy())
    assert np.allclose(from_saved.val[1]["pixel_values"].numpy(), from_layout.val[1]["pixel_values"].numpy())


def test_index_with_worker_processes_matches_one_process(tmp_path):
    root = small_layout(tmp_path / "data", n=12)
    one = index_layout(root, "train", PNEUMOTHORAX)
    shutil.rmtree(root / ".cxrseg-cache")
    assert index_layout(root, "train", PNEUMOTHORAX, num_proc=2) == one


def identical_pairs(tmp_path, n=6):
    """``n`` identical image/mask pairs, "standard" augmentation: any difference between items comes from the draws."""
    root = tmp_path / "data"
    image = np.zeros((64, 64), np.uint8)
    image[10:40, 20:30] = 255
    for i in range(n):
        write_pair(root, f"same{i}", image, (image > 0).astype(np.uint8))
    data_args = DataArguments(data_dir=str(root), image_size=64, augmentation="standard", val_fraction=0.2)
    return load_training_data(data_args, PNEUMOTHORAX, tmp_path / "splits.json", mean=MEAN, std=STD).train


def test_augmentation_is_a_function_of_the_sampler_key_alone(tmp_path):
    """Items read by key are the same with or without data-loader workers, whatever the global RNG, batched or one
    by one; different places in an epoch draw different augmentations, even of the same row."""
    import torch
    from transformers import default_data_collator

    train = identical_pairs(tmp_path)
    keys = [SampleKey(row=p % 2, seed=0, epoch=3, position=p) for p in range(8)]

    def batches(num_workers, global_seed):
        torch.manual_seed(global_seed)
        loader = torch.utils.data.DataLoader(
            train, batch_sampler=BatchSampler(keys, 2, False), num_workers=num_workers, collate_fn=default_data_collator
        )
        return [batch["pixel_values"] for batch in loader]

    in_process, in_workers = batches(0, global_seed=1), batches(2, global_seed=2)
    for a, b in zip(in_process, in_workers, strict=True):
        assert torch.equal(a, b)
    items = torch.cat(in_process)
    assert torch.equal(items[5], train[keys[5]]["pixel_values"])
    distinct = {tuple(item.flatten().tolist()) for item in items}
    assert len(distinct) >= 6, "8 draws of 2 rows should mostly differ"


def test_pipeline_steps_draw_independently():
    """One random stream for the whole pipeline: two p=0.5 flips disagree about half the time (seeded step by step
    they would always agree)."""
    pair = PairTransform(PNEUMOTHORAX, "standard", 64, MEAN, STD)
    pair.pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    image = np.zeros((64, 64), np.uint8)
    image[0, 0] = 255  # a corner pixel: where it lands tells which flips ran
    disagree = 0
    for seed in range(40):
        bright = pair(image, np.zeros_like(image), seed)["pixel_values"][0] > 0
        disagree += bool(bright[0, 63] or bright[63, 63]) != bool(bright[63, 0] or bright[63, 63])
    assert 8 <= disagree <= 32
