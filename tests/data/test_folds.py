"""Cross-validation folds: a partition of the images, patients never split, strata spread evenly (on the real
ChestX-Det class distribution too), patient ids from metadata.csv and NIH names, and clear errors for bad files."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cxrseg.data.groups import patient_groups, read_patient_ids
from cxrseg.data.splits import (
    check_folds,
    load_or_make_folds,
    load_or_make_split,
    make_folds,
    placement_cost,
    save_split,
)
from cxrseg.errors import DataError
from cxrseg.labels import CHESTXDET_CLASSES

# The real ChestX-Det annotations (Apache-2.0) from the shared/ folder beside the checkout; read-only.
CHESTXDET_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "chestxdet" / "ChestX_Det_train.json.gz"


def siim_like(num_patients: int = 300, seed: int = 0) -> tuple[list[str], list[tuple[bool]], list[str]]:
    """Most patients with one image, some with 2 or 3; ~22% positive images."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 1, 1, 1, 2, 3], size=num_patients)
    groups = [f"patient:{p}" for p in np.repeat(np.arange(num_patients), sizes)]
    ids = [f"img{i:04d}" for i in range(len(groups))]
    presence = [(bool(v),) for v in rng.random(len(ids)) < 0.22]
    return ids, presence, groups


def val_counts(folds: list[dict], ids: list[str], labels: list) -> np.ndarray:
    """[fold, label value]: how many validation images of each fold have each label."""
    label_of = dict(zip(ids, labels))
    values = sorted(set(labels))
    return np.array([[sum(label_of[i] == v for i in fold["val"]) for v in values] for fold in folds])


def test_folds_partition_the_images_and_are_seeded():
    ids, presence, _ = siim_like()
    folds = make_folds(ids, presence, ids, 5, seed=3)
    vals = [image_id for fold in folds for image_id in fold["val"]]
    assert sorted(vals) == sorted(ids)  # every image in exactly one validation fold
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == sorted(ids) and fold["val"] == sorted(fold["val"])
    assert make_folds(ids, presence, ids, 5, seed=3) == folds
    assert make_folds(ids, presence, ids, 5, seed=4) != folds
    sizes = [len(fold["val"]) for fold in folds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("seed", range(5))
def test_patients_never_cross_and_positives_are_spread_within_one(seed):
    ids, presence, groups = siim_like(seed=seed)
    folds = make_folds(ids, presence, groups, 5, seed=seed)
    group_of = dict(zip(ids, groups))
    val_groups = [{group_of[i] for i in fold["val"]} for fold in folds]
    for k, fold in enumerate(folds):
        assert not val_groups[k] & {group_of[i] for i in fold["train"]}
        for j in range(k):
            assert not val_groups[k] & val_groups[j]
    positives = val_counts(folds, ids, [p[0] for p in presence])[:, 1]
    assert positives.max() - positives.min() <= 1, positives
    check_folds(folds, Path("splits.json"), ids, groups)  # the loader's checks agree


def fold_load(folds: list[dict], ids: list[str], presence: list[tuple]) -> np.ndarray:
    """int [K, C + 1]: per fold, its validation images with each class, then its number of images."""
    row_of = {image_id: i for i, image_id in enumerate(ids)}
    return np.array(
        [[*np.sum([presence[row_of[i]] for i in fold["val"]], 0, dtype=int), len(fold["val"])] for fold in folds]
    )


def exhaustive_best(presence: list[tuple], groups: list[str], num_folds: int) -> tuple[float, float]:
    """The lowest (sum of class spreads, size spread) over every placement of the groups in non-empty folds."""
    names = sorted(set(groups))
    content = np.array(
        [
            [*np.sum([p for p, g in zip(presence, groups) if g == name], 0, dtype=int), groups.count(name)]
            for name in names
        ]
    )
    best = None
    for placement in itertools.product(range(num_folds), repeat=len(names)):
        if len(set(placement)) < num_folds:
            continue
        load = np.zeros((num_folds, content.shape[1]), dtype=int)
        np.add.at(load, list(placement), content)
        cost = placement_cost(load)[:2]
        best = cost if best is None or cost < best else best
    return best


@pytest.mark.parametrize("design", range(24))
def test_folds_reach_the_exhaustive_optimum_on_small_grouped_designs(design):
    """Random patients of 1-4 images, one or two classes at random prevalences, 2-4 folds: the class spreads, then
    the fold-size spread, equal the best over every placement (the greedy start alone missed 3/3 where 0 was
    reachable: issue 20's 9/10/8 and 6/3/5)."""
    rng = np.random.default_rng(design)
    num_folds = [2, 3, 4][design % 3]
    num_groups = {2: 11, 3: 9, 4: 7}[num_folds]
    sizes = rng.choice([1, 1, 1, 2, 3, 4], size=num_groups)
    groups = [f"patient:{g}" for g in np.repeat(np.arange(num_groups), sizes)]
    ids = [f"img{i}" for i in range(len(groups))]
    num_classes = 1 + design % 2
    presence = [tuple(bool(v) for v in row) for row in rng.random((len(ids), num_classes)) < rng.uniform(0.15, 0.5)]
    folds = make_folds(ids, presence, groups, num_folds, seed=design)
    check_folds(folds, Path("splits.json"), ids, groups)
    assert placement_cost(fold_load(folds, ids, presence))[:2] == exhaustive_best(presence, groups, num_folds)


def test_siim_sized_folds_are_level():
    """~10k patients, ~14k images, 5 folds: positives and fold sizes each differ by at most one image."""
    ids, presence, groups = siim_like(num_patients=10_000, seed=1)
    folds = make_folds(ids, presence, groups, 5, seed=0)
    spread = np.ptp(fold_load(folds, ids, presence), axis=0)
    assert spread.max() <= 1, spread


def test_real_chestxdet_classes_are_spread_evenly():
    """The 3,025 real ChestX-Det training records (13 classes, Mass in 115 images, Consolidation in 1,349): every
    class's count, and the fold sizes, differ by at most one image between the 5 folds."""
    if not CHESTXDET_TRAIN.exists():
        pytest.skip("the ChestX-Det annotations are not in this checkout's workplace")
    records = json.loads(gzip.decompress(CHESTXDET_TRAIN.read_bytes()))
    ids = [record["file_name"] for record in records]
    presence = [tuple(name in record["syms"] for name in CHESTXDET_CLASSES) for record in records]
    assert (
        len(ids) == 3025
        and Counter(name for p in presence for name, on in zip(CHESTXDET_CLASSES, p) if on)["Mass"] == 115
    )
    folds = make_folds(ids, presence, ids, 5, seed=42)
    assert np.ptp(fold_load(folds, ids, presence), axis=0).max() <= 1


def test_patients_from_metadata_then_nih_names(tmp_path):
    (tmp_path / "metadata.csv").write_text("image_id,split,PatientID\na,train,P1\nb,train,P1\nc,train,\n")
    ids = ["a", "b", "c", "00000001_000", "00000001_003", "00000002_000"]
    groups, described = patient_groups(tmp_path, ids)
    assert groups == [
        "patient:P1",
        "patient:P1",
        "image:c",
        "patient:00000001",
        "patient:00000001",
        "patient:00000002",
    ]
    assert "3 patients" in described and "1 without a known patient" in described
    assert patient_groups(tmp_path / "elsewhere", ["36204"])[0] == ["image:36204"]  # ChestX-Det names: none


def test_patient_csv_errors_name_the_file_and_row(tmp_path):
    bad = tmp_path / "patients.csv"
    bad.write_text("image_id,patient\na,P1\n")
    with pytest.raises(DataError, match=r"patients\.csv: needs the columns image_id and PatientID"):
        read_patient_ids(bad)
    bad.write_text("image_id,PatientID\na,P1\nb,P2\na,P3\n")
    with pytest.raises(DataError, match=r"row 4: image 'a' has patient 'P3' but an earlier row gives 'P1'"):
        read_patient_ids(bad)


def test_saved_folds_are_reused_and_checked(tmp_path):
    ids, presence, groups = siim_like(num_patients=40)
    path = tmp_path / "splits.json"
    folds = load_or_make_folds(path, ids, presence, groups, 3, seed=0)
    assert json.loads(path.read_text()) == folds  # nnU-Net style: a list of {"train", "val"}
    assert load_or_make_folds(path, ids, presence, groups, 3, seed=99) == folds
    with pytest.raises(DataError, match="holds 3 folds but the recipe says num_folds: 4"):
        load_or_make_folds(path, ids, presence, groups, 4, seed=0)
    with pytest.raises(DataError, match="holds 3 cross-validation folds, not one split: set num_folds: 3"):
        load_or_make_split(path, ids, [p[0] for p in presence], 0.2, 0)
    single = tmp_path / "single.json"
    save_split(single, load_or_make_split(single, ids, [p[0] for p in presence], 0.2, 0))  # train.py saves it
    assert load_or_make_split(single, ids, [p[0] for p in presence], 0.5, 1) == json.loads(single.read_text())
    with pytest.raises(DataError, match="holds one train/val split, not 3 folds"):
        load_or_make_folds(single, ids, presence, groups, 3, seed=0)


def test_bad_folds_give_a_clear_error():
    ids = ["a", "b", "c", "d"]
    groups = ["patient:1", "patient:1", "image:c", "image:d"]
    path = Path("splits.json")

    def folds(*vals):
        return [{"train": sorted(set(ids) - set(val)), "val": list(val)} for val in vals]

    with pytest.raises(DataError, match=r"image 'b' is in the validation sets of folds 0 and 1"):
        check_folds(folds(["a", "b"], ["b", "c", "d"]), path, ids, groups)
    with pytest.raises(DataError, match=r"1 images of the data are in no fold's validation set \(first: 'd'\)"):
        check_folds(folds(["a", "b"], ["c"]), path, ids, groups)
    with pytest.raises(DataError, match=r"patient:1 has images in the validation sets of folds 0 \('a'\) and 1"):
        check_folds(folds(["a", "c"], ["b", "d"]), path, ids, groups)
    crossing = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "b"], "val": ["b", "c", "d"]}]
    with pytest.raises(DataError, match=r"fold 1: 1 images are in both train and val"):
        check_folds(crossing, path, ids, groups)
    with pytest.raises(DataError, match=r"fold 1: 1 val ids are not in the data \(first: 'zzz'\)"):
        check_folds(folds(["a", "b"], ["c", "d", "zzz"]), path, ids, groups)
    with pytest.raises(DataError, match="expected a list of folds"):
        check_folds({"train": ids}, path, ids, groups)
    with pytest.raises(DataError, match="cannot fill 5 folds"):
        make_folds(ids, [(False,)] * 4, groups, 5, seed=0)
