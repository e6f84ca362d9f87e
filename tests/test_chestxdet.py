"""ChestX-Det multi-label: overlapping regions survive preparation, training batches and prediction; a tiny model
learns several overlapping classes; the demo recipe runs end to end. Data is drawn here, in tmp_path."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from transformers import TrainingArguments, default_data_collator

from cxrseg.cli import main as cxrseg_main
from cxrseg.config import DataArguments, LossArguments, SamplingArguments
from cxrseg.data.dataset import build_sampler, load_training_data
from cxrseg.data.png_layout import read_layout_labels
from cxrseg.inference.predict import predict
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.labels import CHESTXDET, CHESTXDET_CLASSES, unpack_multilabel
from cxrseg.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from cxrseg.prepare.chestxdet import prepare_chestxdet
from cxrseg.prepare.writer import PrepareOptions
from cxrseg.synthetic import MULTILABEL_DEMO_CLASSES, synthetic_multilabel_radiograph
from cxrseg.training.losses import build_loss
from cxrseg.training.trainer import SegmentationTrainer, streaming_metrics
from tests.conftest import TINY_MODEL_CONFIG

SIZE = 64
DRAWN = ("Cardiomegaly", "Effusion", "Mass", "Pneumothorax")
"""The classes the test images hold; each has its own look (below), and they overlap."""
INDEX = {name: CHESTXDET_CLASSES.index(name) for name in CHESTXDET_CLASSES}


def ellipse(cx: float, cy: float, rx: float, ry: float) -> list[list[int]]:
    return cv2.ellipse2Poly((int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, 15).tolist()


def draw_case(rng: np.random.Generator, forced: bool = False) -> tuple[np.ndarray, list[tuple[str, list]]]:
    """One image and its official-format regions (class, polygon). Cardiomegaly: a large mid-gray ellipse;
    Effusion: a bright basal region rising laterally; Mass: a textured disk, often on the heart; Pneumothorax: a dark
    apical band. ``forced``: all four, with Mass, Effusion and Cardiomegaly overlapping."""
    s = SIZE
    regions = []
    has = dict.fromkeys(DRAWN, True) if forced else {name: rng.random() < 0.55 for name in DRAWN}
    heart = (s * 0.5 + rng.uniform(-3, 3), s * 0.6 + rng.uniform(-3, 3))
    if has["Cardiomegaly"]:
        regions.append(("Cardiomegaly", ellipse(*heart, s * 0.22, s * 0.16)))
    if has["Effusion"]:
        left = not forced and rng.random() < 0.5
        x_wall, x_mid = (0, s * 0.55) if left else (s - 1, s * 0.45)
        top = s * (0.55 if forced else rng.uniform(0.62, 0.7))
        regions.append(("Effusion", [[x_wall, top], [x_mid, top + s * 0.1], [x_mid, s - 1], [x_wall, s - 1]]))
    if has["Mass"]:
        on_heart = forced or rng.random() < 0.5
        centre = (heart[0] + s * 0.2, heart[1] + s * 0.1) if on_heart else rng.uniform(s * 0.2, s * 0.8, 2)
        regions.append(("Mass", ellipse(*centre, s * 0.13, s * 0.13)))
    if has["Pneumothorax"]:
        x0 = 2 if rng.random() < 0.5 else s * 0.55
        regions.append(("Pneumothorax", [[x0, 2], [x0 + s * 0.4, 2], [x0 + s * 0.4, s * 0.18], [x0, s * 0.18]]))
    planes = planes_of_regions(regions)
    yy, xx = np.mgrid[0:s, 0:s]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)
    image = 90 + 6 * rng.standard_normal((s, s))
    image += 55 * planes[INDEX["Cardiomegaly"]] + 100 * planes[INDEX["Effusion"]]
    image += planes[INDEX["Mass"]] * (40 + 80 * checker) - 70 * planes[INDEX["Pneumothorax"]]
    return np.clip(image, 0, 255).astype(np.uint8), regions


def planes_of_regions(regions: list[tuple[str, list]]) -> np.ndarray:
    """uint8 0/1 [13, S, S]: each polygon filled into its class's plane (computed here, independently of prepare)."""
    planes = np.zeros((len(CHESTXDET_CLASSES), SIZE, SIZE), np.uint8)
    for name, polygon in regions:
        cv2.fillPoly(planes[INDEX[name]], [np.rint(np.array(polygon)).astype(np.int32)], 1)
    return planes


@pytest.fixture(scope="module")
def chestxdet_root(tmp_path_factory):
    """48 drawn images + ChestX_Det_train.json → `prepare chestxdet` → the multi-label PNG layout.
    Returns (layout root, {image_id: regions})."""
    raw = tmp_path_factory.mktemp("chestxdet-raw")
    (raw / "images").mkdir()
    rng = np.random.default_rng(0)
    records, truth = [], {}
    for i in range(48):
        image, regions = draw_case(rng, forced=i < 4)
        cv2.imwrite(str(raw / "images" / f"{1000 + i}.png"), image)
        records.append(
            {
                "file_name": f"{1000 + i}.png",
                "syms": [n for n, _ in regions],
                "boxes": [[0, 0, 1, 1]] * len(regions),
                "polygons": [p for _, p in regions],
            }
        )
        truth[str(1000 + i)] = regions
    (raw / "ChestX_Det_train.json").write_text(json.dumps(records))
    out = raw.parent / "chestxdet-layout"
    prepare_chestxdet(raw / "images", [raw / "ChestX_Det_train.json"], PrepareOptions(out, image_size=SIZE))
    return out, truth


def overlap_pixel(regions, first: str, second: str) -> tuple[int, int]:
    """(y, x) of a pixel inside both classes' polygons, away from their edges."""
    planes = planes_of_regions(regions)
    both = planes[INDEX[first]] & planes[INDEX[second]]
    both = cv2.erode(both, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(both)
    assert len(ys), f"the drawn case has no {first}/{second} overlap"
    return int(ys[len(ys) // 2]), int(xs[len(xs) // 2])


def load(root, out_dir, augmentation="none"):
    data_args = DataArguments(data_dir=str(root), image_size=SIZE, augmentation=augmentation, val_fraction=0.25)
    return load_training_data(data_args, CHESTXDET, out_dir / "splits.json", mean=IMAGENET_MEAN, std=IMAGENET_STD)


PAIRS = (("Cardiomegaly", "Mass"), ("Cardiomegaly", "Effusion"), ("Effusion", "Mass"))


def test_overlaps_survive_preparation(chestxdet_root):
    root, truth = chestxdet_root
    assert read_layout_labels(root) == CHESTXDET
    for image_id in ("1000", "1001", "1002", "1003"):
        packed = cv2.imread(str(root / "masks" / "train" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert packed.dtype == np.uint16
        planes = unpack_multilabel(packed, len(CHESTXDET_CLASSES)).transpose(2, 0, 1)
        np.testing.assert_array_equal(planes, planes_of_regions(truth[image_id]))
        for first, second in PAIRS:
            y, x = overlap_pixel(truth[image_id], first, second)
            on = {CHESTXDET_CLASSES[c] for c in np.nonzero(planes[:, y, x])[0]}
            assert {first, second} <= on, (image_id, first, second, on)


def test_overlaps_survive_training_batches_and_class_presence(chestxdet_root, tmp_path):
    root, truth = chestxdet_root
    data = load(root, tmp_path)
    found = 0
    for split, rows in ((data.train, data.train.rows), (data.val, data.val)):
        loader = torch.utils.data.DataLoader(split, batch_size=8, collate_fn=default_data_collator)
        ids = list(rows.with_format(None)["image_id"])
        for start, batch in zip(range(0, len(ids), 8), loader):
            assert batch["labels"].shape[1:] == (13, SIZE, SIZE) and batch["labels"].dtype == torch.float32
            for offset, image_id in enumerate(ids[start : start + 8]):
                if image_id not in ("1000", "1001", "1002", "1003"):
                    continue
                found += 1
                labels = batch["labels"][offset]
                for first, second in PAIRS:
                    y, x = overlap_pixel(truth[image_id], first, second)
                    assert labels[INDEX[first], y, x] == 1 and labels[INDEX[second], y, x] == 1
    assert found == 4
    train_ids = data.train.rows["image_id"]
    expected = [tuple(bool(p.any()) for p in planes_of_regions(truth[i])) for i in train_ids]
    assert data.train_class_presence == expected


def forced_two_class_model(folder, on=("Effusion", "Mass")):
    """A tiny multi-label model whose head predicts exactly the classes ``on`` at every pixel, saved to ``folder``."""
    model, processor = build_model(None, TINY_MODEL_CONFIG, CHESTXDET, SIZE)
    with torch.no_grad():
        model.decode_head.classifier.weight.zero_()
        model.decode_head.classifier.bias.fill_(-20.0)
        for name in on:
            model.decode_head.classifier.bias[INDEX[name]] = 20.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_prediction_holds_two_classes_at_one_pixel(tmp_path):
    model_dir = forced_two_class_model(tmp_path / "model")
    image = np.random.default_rng(1).integers(0, 256, (80, 96), dtype=np.uint8)  # not the working size
    cv2.imwrite(str(tmp_path / "case.png"), image)
    segmenter = load_segmenter(model_dir, device="cpu")
    assert segmenter.output_names == CHESTXDET_CLASSES
    summary = predict(segmenter, tmp_path / "case.png", tmp_path / "out", save_probabilities=True, num_workers=0)
    assert summary.num_predicted == 1 and summary.num_positive == 1
    spec = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert spec["names"] == list(CHESTXDET_CLASSES) and spec["multilabel"] is True
    packed = cv2.imread(str(tmp_path / "out" / "masks" / "case.png"), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16 and packed.shape == (80, 96)
    planes = unpack_multilabel(packed, 13)
    expected = np.zeros(13, np.uint8)
    expected[[INDEX["Effusion"], INDEX["Mass"]]] = 1
    assert (planes == expected).all()  # every pixel: Effusion and Mass on, the 11 others off
    mass = cv2.imread(str(tmp_path / "out" / "probabilities" / "case" / "Mass.png"), cv2.IMREAD_UNCHANGED)
    thickening = cv2.imread(
        str(tmp_path / "out" / "probabilities" / "case" / "Pleural_Thickening.png"), cv2.IMREAD_UNCHANGED
    )
    assert (mass == 255).all() and (thickening == 0).all()
    overlay = cv2.imread(str(tmp_path / "out" / "overlays" / "case.png"))
    assert overlay.shape == (80, 96, 3)


def test_synthetic_multilabel_demo_is_deterministic_and_overlaps():
    image, planes = synthetic_multilabel_radiograph(3, 96)
    again, planes_again = synthetic_multilabel_radiograph(3, 96)
    assert np.array_equal(image, again) and np.array_equal(planes, planes_again)
    assert image.dtype == np.uint8 and planes.shape == (13, 96, 96)
    drawn = np.zeros(13, bool)
    overlapping = set()
    for seed in range(60):
        _, planes = synthetic_multilabel_radiograph(seed, 96)
        present = planes.reshape(13, -1).any(1)
        drawn |= present
        for a in np.nonzero(present)[0]:
            for b in np.nonzero(present)[0]:
                if a < b and (planes[a] & planes[b]).any():
                    overlapping.add((CHESTXDET_CLASSES[a], CHESTXDET_CLASSES[b]))
    assert {CHESTXDET_CLASSES[c] for c in np.nonzero(drawn)[0]} == set(MULTILABEL_DEMO_CLASSES)
    assert ("Cardiomegaly", "Effusion") in overlapping and len(overlapping) >= 3


def test_make_demo_data_chestxdet_writes_the_multilabel_layout(tmp_path):
    argv = ["make-demo-data", "--task", "chestxdet", "--out", str(tmp_path / "d"), "--num-images", "3", "--size", "48"]
    assert cxrseg_main(argv) == 0
    assert read_layout_labels(tmp_path / "d") == CHESTXDET
    masks = sorted((tmp_path / "d" / "masks" / "train").glob("*.png"))
    assert len(masks) == 3
    for path in masks:
        packed = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert packed.dtype == np.uint16 and packed.shape == (48, 48)


@pytest.mark.slow
def test_tiny_model_learns_overlapping_classes(chestxdet_root, tmp_path):
    """80 steps on 36 images: per-class Dice beats the untrained model's on every class present, and the Trainer
    logs per-class keys, selects the best checkpoint by the mean Dice and writes them as JSON."""
    root, _ = chestxdet_root
    torch.manual_seed(0)
    model, processor = build_model(None, TINY_MODEL_CONFIG, CHESTXDET, SIZE)
    data = load(root, tmp_path, augmentation="none")
    compute, preprocess = streaming_metrics(CHESTXDET)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=80,
        per_device_train_batch_size=6,
        per_device_eval_batch_size=12,
        learning_rate=3e-3,
        warmup_steps=5,
        lr_scheduler_type="constant_with_warmup",
        eval_strategy="steps",
        eval_steps=40,
        save_strategy="steps",
        save_steps=40,
        metric_for_best_model="dice",
        greater_is_better=True,
        load_best_model_at_end=True,
        remove_unused_columns=False,
        label_names=["labels"],
        batch_eval_metrics=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        report_to="none",
        logging_steps=10,
    )
    trainer = SegmentationTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=processor,
        compute_metrics=compute,
        preprocess_logits_for_metrics=preprocess,
        loss_fn=build_loss(
            LossArguments(class_weights="auto", max_pos_weight=5.0), CHESTXDET, data.pixel_counts, data.num_pixels
        ),
        train_sampler=build_sampler(SamplingArguments(balanced_sampling=True), CHESTXDET, data, seed=0)[0],
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for name in DRAWN:
        assert after[f"eval_num_positive_images/{name}"] > 0
        assert after[f"eval_dice/{name}"] > before[f"eval_dice/{name}"] + 0.2, (name, before, after)
    per_class = [after[f"eval_dice/{name}"] for name in CHESTXDET_CLASSES]
    assert after["eval_dice"] == pytest.approx(np.mean(per_class))
    during = [row["eval_dice"] for row in trainer.state.log_history if "eval_dice" in row and row["step"] > 0]
    assert trainer.state.best_metric == max(during)  # "dice" resolves to the mean, not to a per-class key
    trainer.save_state()
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert any("eval_dice/Mass" in row for row in state["log_history"])


@pytest.mark.slow
def test_chestxdet_demo_recipe_trains_and_predicts_end_to_end(tmp_path):
    """run_train.py with recipe/chestxdet_demo.yaml (tiny model, 16 generated images, 1 epoch), then the
    `cxrseg predict` CLI on its model: 13 named outputs everywhere, per-class metrics in all_results.json."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "run_train.py",
        "--config",
        "recipe/chestxdet_demo.yaml",
        "--data_dir",
        str(tmp_path / "demo"),
        "--demo_num_images",
        "16",
        "--image_size",
        "64",
        "--model_config",
        json.dumps(TINY_MODEL_CONFIG),
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--output_dir",
        str(out),
        "--logging_steps",
        "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_layout_labels(tmp_path / "demo") == CHESTXDET  # the multi-label demo data was generated
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(13)] == list(CHESTXDET_CLASSES)
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_dice", "eval_ap", "eval_dice/Mass", "eval_iou/Pneumothorax"} <= results.keys()
    assert all(f"eval_dice/{name}" in results for name in CHESTXDET_CLASSES)
    # AP is undefined for a class without positive pixels: left out, so the JSON files hold no NaN
    assert all(math.isfinite(value) for value in results.values())
    card = (out / "README.md").read_text()
    assert "Pleural Thickening" in card and "Cardiomegaly" in card
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrseg",
            "predict",
            "--model",
            str(out),
            "--input",
            str(tmp_path / "demo" / "images" / "train" / "demo_00000.png"),
            "--out",
            str(tmp_path / "pred"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    packed = cv2.imread(str(tmp_path / "pred" / "masks" / "demo_00000.png"), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16 and packed.shape == (256, 256)
    assert json.loads((tmp_path / "pred" / "labels.json").read_text())["names"] == list(CHESTXDET_CLASSES)
    evaluated = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrseg",
            "evaluate",
            "--model",
            str(out),
            "--data",
            str(tmp_path / "demo"),
            "--out",
            str(tmp_path / "eval"),
            "--score-size",
            "working",  # as training's evaluation: the demo data is stored at 256², larger than the working size
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]  # a multi-label summary table, no KeyError
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dice"] == pytest.approx(results["eval_dice"], abs=1e-6)  # equals training's evaluation
