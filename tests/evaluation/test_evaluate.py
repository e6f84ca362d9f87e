"""cxrseg evaluate: streaming metrics equal the metric definitions on known probability maps, the post-processing
search finds the triplet a dataset was built for, split resolution, multi-label, and the CLI end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxrseg.cli import main
from cxrseg.data.png_layout import index_layout
from cxrseg.data.splits import make_split
from cxrseg.errors import DataError
from cxrseg.evaluation.evaluate import evaluate
from cxrseg.evaluation.metrics import SegmentationMetrics, dice_score
from cxrseg.evaluation.rule_search import search_grid
from cxrseg.evaluation.stream import split_rows
from cxrseg.inference.preprocessor import Preprocessor
from cxrseg.inference.segmenter import Segmenter, load_segmenter
from cxrseg.labels import PNEUMOTHORAX, LabelSet, pack_multilabel
from cxrseg.model import IMAGENET_MEAN, IMAGENET_STD
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess
from cxrseg.synthetic import make_demo_data
from tests.conftest import save_tiny_model


class PassThroughBackbone(nn.Module):
    def forward_with_filtered_kwargs(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(feature_maps=(pixel_values,))


class IntensityModel(nn.Module):
    """A stand-in network whose foreground probability is the input's gray level / 255, so a test decides the
    probability maps by writing images (logits [0, logit(p)]: the softmax gives p back). It has the two parts of
    UperNet that inference calls (:func:`cxrseg.inference.segmenter.main_logits`): a backbone (here the input itself)
    and the decode head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = PassThroughBackbone()

    def decode_head(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        gray = (features[0][:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).clamp(1e-6, 1 - 1e-6)
        logit = torch.log(gray) - torch.log1p(-gray)
        return torch.stack([torch.zeros_like(logit), logit], 1)


def intensity_segmenter(folder: Path) -> Segmenter:
    return Segmenter(
        IntensityModel(),
        PNEUMOTHORAX,
        Preprocessor((64, 64), IMAGENET_MEAN, IMAGENET_STD),
        None,
        str(folder),
        folder,
        True,
        torch.device("cpu"),
    )


def level(p: float) -> int:
    return round(p * 255)


def triplet_dataset(root: Path) -> Path:
    """64² images whose gray level / 255 is the probability, built so that exactly the triplets with top in
    (0.65, 0.9], min_area in (4, 10] and bottom in (0.25, 0.39] score a perfect Kaggle Dice:

    * positives: truth = a rectangle whose core is 0.90 (64 px, or 10 px in a small lesion) and rim 0.39,
      surrounded by a 0.25 halo that is not truth (bottom must be in (0.25, 0.39]);
    * negative A: 30 px at 0.65 (top must be above 0.65: the area grid stops below 30 px at 64²);
    * negative B: 4 px at 0.96 (min_area must exceed 4; the small lesion needs it at most 10).
    """
    images, masks = root / "images" / "test", root / "masks" / "test"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)

    def write(name: str, image: np.ndarray, mask: np.ndarray) -> None:
        cv2.imwrite(str(images / f"{name}.png"), image)
        cv2.imwrite(str(masks / f"{name}.png"), mask * 255)

    for i, (top, left, height, width, core) in enumerate([(10, 10, 12, 12, 8), (30, 30, 5, 6, None)]):
        image, mask = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
        image[top - 2 : top + height + 2, left - 2 : left + width + 2] = level(0.25)
        image[top : top + height, left : left + width] = level(0.39)
        mask[top : top + height, left : left + width] = 1
        if core is not None:
            image[top + 2 : top + 2 + core, left + 2 : left + 2 + core] = level(0.90)
        else:
            image[top + 1 : top + 3, left + 1 : left + 6] = level(0.90)  # 10 px
        write(f"positive_{i}", image, mask)
    negative_a = np.zeros((64, 64), np.uint8)
    negative_a[40:45, 5:11] = level(0.65)
    write("negative_a", negative_a, np.zeros((64, 64), np.uint8))
    negative_b = np.zeros((64, 64), np.uint8)
    negative_b[50:52, 50:52] = level(0.96)
    write("negative_b", negative_b, np.zeros((64, 64), np.uint8))
    write("empty", np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8))
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_metrics_and_per_image_dice_match_the_definitions_on_known_probabilities(tmp_path):
    root = triplet_dataset(tmp_path / "data")
    segmenter = intensity_segmenter(tmp_path / "model")
    result = evaluate(segmenter, root, "test", tmp_path / "out", batch_size=2)

    ids = sorted(p.stem for p in (root / "images" / "test").iterdir())
    probs = np.stack([cv2.imread(str(root / "images/test" / f"{i}.png"), 0) / 255 for i in ids]).astype(np.float32)
    truth = np.stack([cv2.imread(str(root / "masks/test" / f"{i}.png"), 0) > 0 for i in ids]).astype(np.uint8)
    reference = SegmentationMetrics(threshold=0.5)
    reference.update(probs, truth)
    expected = reference.compute()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("dice", "iou", "kaggle_dice", "ap", "best_f1", "best_threshold", "num_images", "num_positive_images"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["image_size"] == 64 and metrics["split"] == "test" and metrics["postprocess"] is None

    rows = read_csv(tmp_path / "out" / "per_image.csv")
    assert [row["image_id"] for row in rows] == ids
    for row, p, t in zip(rows, probs, truth):
        assert int(row["truth_area"]) == t.sum() and int(row["predicted_area"]) == (p >= 0.5).sum()
        assert float(row["dice"]) == pytest.approx(dice_score(p >= 0.5, t), abs=1e-6)
    assert metrics["kaggle_dice_rule"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    assert metrics["kaggle_dice_rule"] == pytest.approx(metrics["kaggle_dice"])
    assert metrics["num_predicted_positive_images"] == sum((p >= 0.5).any() for p in probs)
    assert Image.open(tmp_path / "out" / "pr_curve.png").size == (800, 640)
    assert result.search_table == [] and not (segmenter.model_dir / "postprocess.json").exists()


def test_search_finds_the_triplet_the_data_was_built_for(tmp_path):
    root = triplet_dataset(tmp_path / "data")
    segmenter = intensity_segmenter(tmp_path / "model")
    segmenter.model_dir.mkdir()
    result = evaluate(segmenter, root, "test", tmp_path / "out", batch_size=2, search=True)

    tops, areas, bottoms = search_grid(64)
    assert areas == (0, 1, 2, 4, 6, 8, 12, 16, 23)
    perfect = {
        (r["top_threshold"], r["min_area"], r["bottom_threshold"])
        for r in result.search_table
        if r["kaggle_dice"] == pytest.approx(1.0)
    }
    assert perfect == {
        (t, a, b) for t in tops for a in areas for b in bottoms if 0.65 < t <= 0.9 and 4 < a <= 10 and 0.25 < b <= 0.39
    }
    assert result.best_postprocess == PostProcess(0.7, 6, 0.3, image_size=64)  # ties keep grid order
    assert result.postprocess_path == segmenter.model_dir / "postprocess.json"
    assert PostProcess.load(result.postprocess_path) == result.best_postprocess
    assert result.metrics["kaggle_dice"] < 1  # plain 0.5 keeps negative A and B, loses the rims
    grid = read_csv(tmp_path / "out" / "postprocess_search.csv")
    assert len(grid) == len(tops) * len(areas) * len(bottoms)
    assert float(grid[0]["kaggle_dice"]) == pytest.approx(1.0)

    # The saved rule is now the model's: evaluating again scores it, image by image.
    segmenter.postprocess = PostProcess.load(result.postprocess_path)
    again = evaluate(segmenter, root, "test", tmp_path / "again")
    assert again.metrics["kaggle_dice_rule"] == pytest.approx(1.0)
    assert again.metrics["kaggle_dice"] == pytest.approx(result.metrics["kaggle_dice"])  # metrics stay at 0.5


def test_split_comes_from_splits_json_on_the_training_data_and_other_data_is_scored_whole(tmp_path, demo_root):
    index = index_layout(demo_root, "train", PNEUMOTHORAX)
    split = make_split([r.image_id for r in index], [r.is_positive for r in index], 0.25, 0)
    segmenter = intensity_segmenter(tmp_path)
    segmenter.splits = split  # demo_root is its training data: it holds every id of splits.json
    rows, described, name = split_rows(segmenter, demo_root)  # default: val
    assert [r.image_id for r in rows] == split["val"] and "splits.json" in described and name == "val"
    rows, _, _ = split_rows(segmenter, demo_root, "train")
    assert [r.image_id for r in rows] == split["train"]
    with pytest.raises(DataError, match=r"training data; split 'test' is neither in its splits.json \(train, val\)"):
        split_rows(segmenter, demo_root, "test")

    # Held-out data the model never saw, prepared with the default split name "train": scored whole, no gymnastics.
    held_out = make_demo_data(tmp_path / "held-out", num_images=5, size=32, seed=7, split="train")
    for image in (held_out / "images" / "train").iterdir():  # file names unlike the training data's
        image.rename(image.with_name("other_" + image.name))
    for mask in (held_out / "masks" / "train").iterdir():
        mask.rename(mask.with_name("other_" + mask.name))
    rows, described, name = split_rows(segmenter, held_out)
    assert len(rows) == 5 and "not trained on" in described and name == "held-out"
    rows, _, name = split_rows(segmenter, held_out, "train")
    assert len(rows) == 5 and name == "train"
    with pytest.raises(DataError, match=r"has no split 'val' .*its splits are train .*leave --split out"):
        split_rows(segmenter, held_out, "val")

    segmenter.splits = None  # no splits.json: any data is scored whole
    rows, described, _ = split_rows(segmenter, demo_root, "train")
    assert len(rows) == 24 and "every image" in described
    with pytest.raises(DataError, match="its splits are train"):
        split_rows(segmenter, demo_root, "val")

    segmenter.splits = {"train": ["nope"], "val": [index[0].image_id]}  # a real mismatch: some ids, not all
    with pytest.raises(DataError, match=r"holds 1 of the 2 images .* not the others \(first: 'nope'\).*prepare"):
        split_rows(segmenter, demo_root)
    segmenter.labels = LabelSet("custom", ("a", "b"), multilabel=True)
    with pytest.raises(DataError, match="predicts"):
        split_rows(segmenter, demo_root, "val")


def multilabel_dataset(root: Path, names: tuple[str, ...], num_images: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images/train", "masks/train"):
        (root / sub).mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"task": "custom", "names": list(names), "multilabel": True}))
    for i in range(num_images):
        planes = np.zeros((len(names), 64, 64), np.uint8)
        for c in range(len(names)):
            if rng.random() < 0.6:
                y, x = rng.integers(0, 48, 2)
                planes[c, y : y + 16, x : x + 12] = 1
        cv2.imwrite(str(root / "images/train" / f"img_{i}.png"), rng.integers(0, 256, (64, 64), dtype=np.uint8))
        cv2.imwrite(str(root / "masks/train" / f"img_{i}.png"), pack_multilabel(planes))
    return root


def test_multilabel_model_is_scored_per_class(tmp_path):
    names = ("Effusion", "Nodule", "Pleural Thickening")
    labels = LabelSet("custom", names, multilabel=True)
    root = multilabel_dataset(tmp_path / "data", names)
    model_dir = save_tiny_model(tmp_path / "model", labels)
    segmenter = load_segmenter(model_dir, device="cpu")
    assert segmenter.output_names == names
    result = evaluate(segmenter, root, "train", batch_size=4)
    out = model_dir / "evaluation" / "train"  # the default output folder of a local model
    metrics = json.loads((out / "metrics.json").read_text())
    assert {f"dice/{n}" for n in names} <= metrics.keys() and {f"kaggle_dice_rule/{n}" for n in names} <= metrics.keys()
    assert metrics["kaggle_dice_rule"] == pytest.approx(metrics["kaggle_dice"])
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 6 * 3 and [r["class"] for r in rows[:3]] == list(names)
    assert result.out_dir == out and Image.open(out / "pr_curve.png").size == (800, 640)
    searched = evaluate(segmenter, root, "train", tmp_path / "x", search=True)  # one triplet per class
    assert isinstance(searched.best_postprocess, ClassPostProcess) and searched.best_postprocess.classes == names
    assert load_segmenter(model_dir, device="cpu").postprocess == searched.best_postprocess
    points = np.prod([len(values) for values in search_grid(64, len(names))])
    assert [row["class"] for row in read_csv(tmp_path / "x" / "postprocess_search.csv")[::points]] == list(names)


def test_cli_evaluate_with_search_saves_postprocess_next_to_the_model(tmp_path, demo_root, capsys):
    index = index_layout(demo_root, "train", PNEUMOTHORAX)
    split = make_split([r.image_id for r in index], [r.is_positive for r in index], 0.25, 0)
    model_dir = save_tiny_model(tmp_path / "model", splits=split)
    code = main(
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--data",
            str(demo_root),
            "--search-postprocess",
            "--num-workers",
            "1",
            "--batch-size",
            "4",
            "--tta",
            "hflip",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Kaggle mean Dice" in printed and "Post-processing search" in printed and "best: top" in printed
    out = model_dir / "evaluation" / "val"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == len(split["val"]) and metrics["tta"] == "hflip"
    assert len(read_csv(out / "per_image.csv")) == len(split["val"])
    best = read_csv(out / "postprocess_search.csv")[0]
    saved = PostProcess.load(model_dir / "postprocess.json")
    assert saved == PostProcess(
        float(best["top_threshold"]), int(best["min_area"]), float(best["bottom_threshold"]), image_size=64
    )
    written = json.loads((model_dir / "postprocess.json").read_text())
    provenance = written.pop("provenance")  # how the predictions it was tuned on were made
    assert metrics["search"]["postprocess"] == written
    assert provenance == {
        "tta": "hflip",
        "kind": "single",
        "members": [f"{tmp_path.name}/model"],
        "image_size": 64,
        "score_size": "working",  # the demo images are stored at the working size: both sizes are the same
        "data": str(demo_root),
        "split": "val",
    }
    assert load_segmenter(model_dir).postprocess == saved  # prediction uses it by default
    assert (
        main(["evaluate", "--model", str(model_dir), "--data", str(demo_root), "--split", "test", "--tta", "hflip"])
        == 2
    )
    capsys.readouterr()
    # the rule was tuned with hflip: predictions without it are refused, or with the flag warned about
    assert main(["evaluate", "--model", str(model_dir), "--data", str(demo_root), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "does not fit these predictions: it was tuned with TTA hflip but these predictions use TTA none" in err
    assert not (tmp_path / "e").exists()
    allowed = ["--allow-rule-mismatch", "--out", str(tmp_path / "e"), "--num-workers", "0"]
    assert main(["evaluate", "--model", str(model_dir), "--data", str(demo_root), *allowed]) == 0


class ScaledIntensityModel(nn.Module):
    """A multi-label stand-in: class c's sigmoid probability is ``scales[c]`` times the input's gray level / 255, so a
    class with a small scale is ranked well (AP 1) while its probabilities stay below 0.5, like ChestX-Det's Nodule."""

    def __init__(self, scales: tuple[float, ...]) -> None:
        super().__init__()
        self.scales = torch.tensor(scales).view(1, -1, 1, 1)
        self.backbone = PassThroughBackbone()

    def decode_head(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        gray = (features[0][:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).clamp(0, 1)
        p = (gray * self.scales).clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)


def test_per_class_thresholds_lift_a_class_below_half_from_dice_zero(tmp_path):
    names = ("Effusion", "Nodule")
    labels = LabelSet("custom", names, multilabel=True)
    root = tmp_path / "data"
    for sub in ("images/test", "masks/test"):
        (root / sub).mkdir(parents=True)
    labels.save(root)
    for i in range(6):
        image, planes = np.full((64, 64), level(0.05), np.uint8), np.zeros((2, 64, 64), np.uint8)
        if i % 2 == 0:  # a lesion of both classes; odd images are empty
            image[10 + i : 30 + i, 12:40] = level(0.9)
            planes[:, 10 + i : 30 + i, 12:40] = 1
        cv2.imwrite(str(root / "images/test" / f"img{i}.png"), image)
        cv2.imwrite(str(root / "masks/test" / f"img{i}.png"), pack_multilabel(planes))
    preprocessor = Preprocessor((64, 64), IMAGENET_MEAN, IMAGENET_STD)
    segmenter = Segmenter(
        ScaledIntensityModel((1.0, 0.35)), labels, preprocessor, None, "stand-in", tmp_path, True, torch.device("cpu")
    )  # Nodule: 0.315 on its lesions, 0.0175 elsewhere

    result = evaluate(segmenter, root, "test", tmp_path / "out", search=True)
    metrics = result.metrics
    assert metrics["dice/Nodule"] == 0 and metrics["ap/Nodule"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["search"]["classes"]["Nodule"] == {"kaggle_dice": 1.0, "dice": 1.0}
    rule = result.best_postprocess
    assert isinstance(rule, ClassPostProcess) and rule.classes == names
    nodule = rule.rules[1]
    assert 0.0175 < nodule.bottom_threshold <= 0.315 and (nodule.top_threshold <= 0.315 or nodule.min_area == 0)
    assert json.loads(result.postprocess_path.read_text())["classes"]["Nodule"]["bottom_threshold"] <= 0.3

    segmenter.postprocess = rule  # evaluating again under the tuned rules, image by image
    again = evaluate(segmenter, root, "test", tmp_path / "again").metrics
    assert again["dice_rule/Nodule"] == 1.0 and again["kaggle_dice_rule/Nodule"] == 1.0
    assert again["dice/Nodule"] == 0  # the threshold-0.5 metrics stay as they were
