"""The labels file: one writer (LabelSet.save) and one reader (LabelSet.load) with one validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import UperNetConfig

from cxrseg.data.png_layout import IndexedImage, read_layout_labels
from cxrseg.errors import DataError
from cxrseg.labels import CHESTXDET, PNEUMOTHORAX, LabelSet, labels_from_config
from tests.conftest import save_tiny_model


@pytest.mark.parametrize(
    "labels",
    [
        PNEUMOTHORAX,
        CHESTXDET,
        LabelSet("custom", ("background", "left", "right"), multilabel=False),
        LabelSet("lesions", ("a", "b", "c"), multilabel=True),
    ],
    ids=["pneumothorax", "chestxdet", "custom-single", "custom-multi"],
)
def test_save_load_round_trip(tmp_path, labels):
    path = labels.save(tmp_path)
    assert path == tmp_path / "labels.json" and sorted(p.name for p in tmp_path.iterdir()) == ["labels.json"]
    assert json.loads(path.read_text()) == {
        "task": labels.task,
        "names": list(labels.names),
        "multilabel": labels.multilabel,
    }
    assert LabelSet.load(path) == labels
    assert read_layout_labels(tmp_path) == labels


def test_builtin_task_names_resolve_and_an_absent_file_means_pneumothorax(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"task": "chestxdet"}))
    assert LabelSet.load(tmp_path / "labels.json") is CHESTXDET
    (tmp_path / "labels.json").write_text(json.dumps({"names": ["background", "x"]}))  # task defaults to custom
    assert LabelSet.load(tmp_path / "labels.json") == LabelSet("custom", ("background", "x"), multilabel=False)
    assert read_layout_labels(tmp_path / "elsewhere") is PNEUMOTHORAX


@pytest.mark.parametrize(
    "text, key, message",
    [
        ("{not json", None, "cannot read the labels JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        (json.dumps({"task": 3, "names": ["background", "x"]}), "task", "must be a string"),
        (json.dumps({"names": ["background", "x"], "multilabel": "yes"}), "multilabel", "must be true or false"),
        (json.dumps({"task": "custom", "names": "lesion"}), "names", "must be a list of class names"),
        (json.dumps({"task": "custom", "names": []}), "names", "must be a list of class names"),
        (json.dumps({"task": "custom", "names": ["background", 1]}), "names", "must be a list of class names"),
        (json.dumps({"task": "pneumothrax"}), "names", "'pneumothrax' is not built in"),
        (json.dumps({"names": ["lesion", "background"]}), "names", "'background' first"),
        (json.dumps({"names": ["background"]}), "names", "2..255 names"),
        (json.dumps({"names": ["background"] + [f"c{i}" for i in range(255)]}), "names", "2..255 names"),
        (json.dumps({"names": [f"c{i}" for i in range(17)], "multilabel": True}), "names", "at most 16"),
        (json.dumps({"task": "chestxdet", "names": ["a", "b"]}), "names", "built in with names"),
        (json.dumps({"task": "pneumothorax", "multilabel": True}), "multilabel", "built in with names"),
    ],
    ids=[
        "not-json",
        "not-object",
        "task-type",
        "multilabel-type",
        "names-string",
        "names-empty",
        "names-not-strings",
        "unknown-task",
        "background-not-first",
        "one-name",
        "256-names",
        "17-multilabel",
        "builtin-other-names",
        "builtin-other-multilabel",
    ],
)
def test_each_bad_file_is_one_error_naming_the_file_and_the_key(tmp_path, text, key, message):
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        LabelSet.load(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    if key is not None:
        assert f"'{key}'" in str(error.value)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_layout_labels(tmp_path)  # the layout reader applies the same validation


def test_a_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.json: cannot read the labels JSON"):
        LabelSet.load(tmp_path / "nothere.json")


LUNGS = LabelSet("lungs", ("background", "lung field", "heart"), multilabel=False)
OVERLAPPING = LabelSet("anatomy", ("background", "lung", "clavicle"), multilabel=True)  # "background" is a class here


@pytest.mark.parametrize("labels", [PNEUMOTHORAX, CHESTXDET, LUNGS, OVERLAPPING], ids=lambda labels: labels.task)
def test_a_saved_model_keeps_its_label_set_task_and_kind(tmp_path, labels):
    """config.json holds id2label, problem_type and cxrseg_task; loading gives the same LabelSet back."""
    folder = save_tiny_model(tmp_path / "model", labels=labels)
    config = json.loads((folder / "config.json").read_text())
    assert labels_from_config(config) == labels
    assert labels_from_config(UperNetConfig.from_pretrained(folder)) == labels


def test_configs_saved_before_the_task_was_recorded_are_read_as_before():
    assert labels_from_config({"id2label": {"0": "background", "1": "pneumothorax"}}) == PNEUMOTHORAX
    assert labels_from_config({"id2label": dict(enumerate(CHESTXDET.names))}) == CHESTXDET
    assert labels_from_config({"id2label": {"0": "background", "1": "lung"}}) == LabelSet(
        "custom", ("background", "lung"), multilabel=False
    )


def test_stored_masks_are_decoded_once_by_the_label_set():
    stored = np.array([[0, 1, 2], [2, 255, 0]], np.uint8)
    np.testing.assert_array_equal(LUNGS.decode_mask(stored), stored)  # K classes: the indices as they are
    np.testing.assert_array_equal(PNEUMOTHORAX.decode_mask(np.array([[0, 255, 1]], np.uint8)), [[0, 1, 1]])
    planes = OVERLAPPING.decode_mask(np.array([[0, 1, 3, 6]], np.uint16))
    assert planes.shape == (1, 4, 3) and planes[0, 2].tolist() == [1, 1, 0] and planes[0, 3].tolist() == [0, 1, 1]
    assert LUNGS.first_foreground == 1 and OVERLAPPING.first_foreground == 0
    assert LUNGS.describe() == "lungs (background, lung field, heart; softmax)"


def test_positivity_of_an_indexed_image_follows_its_kind():
    assert not IndexedImage("a", "", "", 2, 2, (4, 0, 0)).is_positive  # a 3-class image of background only
    assert IndexedImage("a", "", "", 2, 2, (3, 0, 1)).is_positive
    assert IndexedImage("a", "", "", 2, 2, (0, 1, 0), multilabel=True).is_positive
    assert not IndexedImage("a", "", "", 2, 2, (0, 0, 0), multilabel=True).is_positive
