"""scripts/showcase.py, tiny: the pictures of a model trained on the synthetic demo data, titled with what it was
trained on; the app screenshot in Chromium; files it did not write are never replaced."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from PIL import Image

from cxrseg.config import parse_recipe, save_recipe
from cxrseg.plots import is_cxrseg_figure
from cxrseg.synthetic import make_demo_data
from tests.conftest import save_tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "showcase.py"


@pytest.fixture
def demo_model(tmp_path) -> tuple[Path, Path]:
    """(a tiny model folder as training leaves it on the demo data: recipe.yaml and splits.json, its data)."""
    data = make_demo_data(tmp_path / "data", num_images=6, size=64, seed=0)
    ids = sorted(p.stem for p in (data / "images" / "train").iterdir())
    model = save_tiny_model(tmp_path / "model", seed=4, splits={"train": ids[:3], "val": ids[3:]})
    save_recipe(parse_recipe(["--config", "recipe/demo.yaml", "--data_dir", str(data)]), model / "recipe.yaml")
    return model, data


def test_the_predictions_picture_says_what_the_model_was_trained_on(demo_model, tmp_path, monkeypatch):
    model, data = demo_model
    script = runpy.run_path(str(SCRIPT))
    titles = []
    real_plot = script["plot_prediction_grid"]

    def plot(examples, path, names, title):
        titles.append((len(examples), title))
        return real_plot(examples, path, names, title=title)

    script["showcase_predictions"].__globals__["plot_prediction_grid"] = plot
    out = tmp_path / "pictures"
    assert script["main"](["--model", str(model), "--data", str(data), "--out", str(out), "--n", "2", "--no-app"]) == 0
    assert titles == [
        (2, "model, trained on cxrseg's synthetic demo images (drawn radiograph-like pictures, not real X-rays)")
    ]
    assert is_cxrseg_figure(out / "showcase_predictions.png") and not (out / "showcase_app.png").exists()
    (out / "showcase_predictions.png").write_bytes(b"a user's file")
    assert script["main"](["--model", str(model), "--data", str(data), "--out", str(out), "--no-app"]) == 2
    assert (out / "showcase_predictions.png").read_bytes() == b"a user's file"


@pytest.mark.slow
def test_the_app_screenshot(demo_model, tmp_path):
    model, data = demo_model
    out = tmp_path / "pictures"
    script = runpy.run_path(str(SCRIPT))
    assert script["main"](["--model", str(model), "--data", str(data), "--out", str(out), "--n", "2"]) == 0
    with Image.open(out / "showcase_app.png") as picture:
        assert picture.size == (1280, 860) and picture.mode == "P"
        assert picture.info["Software"] == "cxrseg scripts/showcase.py"
    assert script["main"](["--model", str(model), "--data", str(data), "--out", str(out), "--n", "2"]) == 0  # its own
    assert not list(out.glob(".*partial"))
