"""The mask index cache (``ROOT/.cxrseg-cache``): usable from any working directory and after the dataset moves,
and never trusted when it does not describe the files beside it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import cxrseg.data.png_layout as png_layout
from cxrseg.data.dataset import rows_to_dataset
from cxrseg.data.png_layout import index_layout
from cxrseg.labels import PNEUMOTHORAX
from cxrseg.synthetic import make_demo_data


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".cxrseg-cache").glob("index-train-*.json"))


@pytest.fixture
def no_indexing(monkeypatch):
    """Fail if the layout is indexed (the cache must answer)."""

    def indexing(*args, **kwargs):
        raise AssertionError("the layout was indexed again")

    monkeypatch.setattr(png_layout, "parallel_map", indexing)


def test_the_cache_serves_any_working_directory_and_a_moved_dataset(tmp_path, monkeypatch, request):
    make_demo_data(tmp_path / "a" / "data", num_images=6, size=32, seed=0)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = index_layout("data", "train", PNEUMOTHORAX)
    request.getfixturevalue("no_indexing")
    monkeypatch.chdir(tmp_path / "b")
    for root in ("../a/data", tmp_path / "a" / "data"):
        rows = index_layout(root, "train", PNEUMOTHORAX)
        assert [r.pixel_counts for r in rows] == [r.pixel_counts for r in first]
        assert all(Path(r.image_path).is_file() and Path(r.mask_path).is_file() for r in rows)
        assert rows_to_dataset(rows)[0]["image"].size == (32, 32)  # the first row decodes: what a batch reads
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "c" / "data")  # copy2: modification times kept
    shutil.rmtree(tmp_path / "a" / "data")
    rows = index_layout(tmp_path / "c" / "data", "train", PNEUMOTHORAX)
    assert all(Path(r.image_path).is_relative_to(tmp_path / "c") for r in rows)
    assert rows_to_dataset(rows)[-1]["mask"].size == (32, 32)


def tamper_counts(stored: dict) -> dict:
    middle = stored["rows"][len(stored["rows"]) // 2]
    middle["pixel_counts"] = middle["pixel_counts"][::-1]  # still sums to the image size
    return stored


@pytest.mark.parametrize(
    "tamper",
    [
        lambda stored: json.dumps(stored)[:-5],  # truncated
        lambda stored: json.dumps({**stored, "rows": stored["rows"][:-1]}),  # an image missing
        lambda stored: json.dumps(
            {**stored, "rows": [{**stored["rows"][0], "image_id": "other"}, *stored["rows"][1:]]}
        ),
        lambda stored: json.dumps(
            {**stored, "rows": [{**stored["rows"][0], "pixel_counts": [1, 2]}, *stored["rows"][1:]]}
        ),
        lambda stored: json.dumps(tamper_counts(stored)),  # well formed, but not what the masks hold
        lambda stored: json.dumps(stored["rows"]),  # the previous format: no digest
        lambda stored: json.dumps({**stored, "masks_sha256": "0" * 64}),  # made from other masks
    ],
    ids=["truncated", "missing-image", "other-id", "impossible-counts", "wrong-counts", "no-digest", "other-masks"],
)
def test_a_cache_that_does_not_describe_the_files_is_rebuilt(tmp_path, tamper):
    root = make_demo_data(tmp_path / "data", num_images=5, size=32, seed=0)
    truth = index_layout(root, "train", PNEUMOTHORAX)
    [cache] = cache_files(root)
    cache.write_text(tamper(json.loads(cache.read_text())))
    assert index_layout(root, "train", PNEUMOTHORAX) == truth
    assert index_layout(root, "train", PNEUMOTHORAX) == truth  # and the rebuilt cache is right


def test_a_cache_copied_from_another_dataset_is_not_trusted(tmp_path):
    """Someone else's cache under the name ours would have (same file names, sizes and times in the key)."""
    ours = make_demo_data(tmp_path / "ours", num_images=5, size=32, seed=0)
    theirs = make_demo_data(tmp_path / "theirs", num_images=5, size=32, seed=1)
    truth = index_layout(ours, "train", PNEUMOTHORAX)
    index_layout(theirs, "train", PNEUMOTHORAX)
    [our_cache], [their_cache] = cache_files(ours), cache_files(theirs)
    shutil.copyfile(their_cache, our_cache)
    assert index_layout(ours, "train", PNEUMOTHORAX) == truth


def test_files_the_layout_does_not_read_are_counted_and_named(tmp_path, demo_root, caplog):
    """A JPEG with its mask, a mask without an image and a subfolder are not read: the warning counts and names
    them; hidden files are not named; the PNG pairs are all read."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    first = sorted((root / "images/train").iterdir())[0]
    shutil.copyfile(first, root / "images/train/scan.jpg")
    shutil.copyfile(root / "masks/train" / first.name, root / "masks/train/scan.jpg")
    shutil.copyfile(root / "masks/train" / first.name, root / "masks/train/orphan.png")
    (root / "images/train/more").mkdir()
    (root / "images/train/.DS_Store").write_text("")
    with caplog.at_level("WARNING", logger="cxrseg"):
        rows = index_layout(root, "train", PNEUMOTHORAX)
    assert len(rows) == len(list((demo_root / "images/train").iterdir()))
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"2 entries of {root / 'images/train'} are not read: more, scan.jpg." in m for m in messages), messages
    assert any(f"2 entries of {root / 'masks/train'} are not read: orphan.png, scan.jpg." in m for m in messages)
    assert not any(".DS_Store" in m for m in messages)
