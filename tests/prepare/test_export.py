"""--save-dataset / --push-to-hub: the layout as a real `datasets.DatasetDict`; only the Hub calls are faked."""

from __future__ import annotations

import cv2
import datasets
import numpy as np
import pytest

import cxrseg.hub.access
from cxrseg.prepare.export import layout_to_datasetdict
from cxrseg.prepare.siim import prepare_siim
from cxrseg.prepare.writer import PrepareOptions
from tests.prepare.conftest import run_prepare


def test_save_dataset_round_trips_the_layout(siim_raw, tmp_path):
    out = tmp_path / "out"
    result = run_prepare("siim", *siim_raw.cli_args(), "--out", str(out), "--image-size", "64", "--save-dataset")
    assert result.returncode == 1, result.stderr  # finished; the unlabelled DICOM was skipped
    loaded = datasets.load_from_disk(str(out / "hf_dataset"))
    assert set(loaded) == {"train", "test"} and loaded["train"].num_rows == 3 and loaded["test"].num_rows == 1
    features = loaded["train"].features
    assert isinstance(features["image"], datasets.Image) and isinstance(features["mask"], datasets.Image)
    assert features["image_id"] == datasets.Value("string") and features["is_positive"] == datasets.Value("bool")
    rows = {row["image_id"]: row for row in loaded["train"]}
    assert {k: v["is_positive"] for k, v in rows.items()} == {"1.2.826.1": True, "1.2.826.2": False, "1.2.826.3": True}
    for image_id, row in rows.items():  # the embedded bytes, not paths into a folder that may move
        png = out / "images" / "train" / f"{image_id}.png"
        np.testing.assert_array_equal(np.asarray(row["image"]), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        mask = cv2.imread(str(out / "masks" / "train" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(np.asarray(row["mask"]), mask)
    test_row = loaded["test"][0]
    assert test_row["mask"] is None and test_row["is_positive"] is None


def test_push_to_hub_is_private_and_a_dataset_repo(siim_raw, tmp_path, monkeypatch, hub):
    monkeypatch.setattr(cxrseg.hub.access, "check_hub_access", lambda repo_id: repo_id)  # no whoami here
    prepare_siim(
        siim_raw.dicom_dir, siim_raw.csv, PrepareOptions(tmp_path / "out", image_size=32, push_to_hub="me/siim-png")
    )
    assert hub.calls[0] == ("create_repo", "me/siim-png", True, "dataset")
    files = {"README.md", "labels.json", "data/train-00000-of-00001.parquet"}
    assert hub.calls[1] == ("create_commit", "me/siim-png", sorted(files))
    pushed = datasets.load_dataset("parquet", data_files=str(hub.repo("me/siim-png", "dataset") / "data/*.parquet"))
    assert pushed["train"].num_rows == 3 and isinstance(pushed["train"].features["image"], datasets.Image)


def test_push_help_warns_about_terms(capsys):
    from cxrseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "siim", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "PRIVATE" in help_text and "SIIM-ACR's terms forbid public redistribution" in help_text


def test_layout_to_datasetdict_reads_multilabel_masks(tmp_path):
    from cxrseg.labels import pack_multilabel

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    planes = np.zeros((13, 8, 8), np.uint8)
    planes[12, 2:4, 2:4] = 1
    planes[0, 3:5, 3:5] = 1
    cv2.imwrite(str(tmp_path / "images" / "train" / "a.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "train" / "a.png"), pack_multilabel(planes))
    row = layout_to_datasetdict(tmp_path)["train"][0]
    assert np.asarray(row["mask"]).max() == (1 << 12) | 1 and row["is_positive"] is True
