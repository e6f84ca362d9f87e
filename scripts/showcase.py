"""The README's and docs' pictures, made from a trained model (the demo model by default) — rerun it after training:

    make demo
    python scripts/showcase.py --model outputs/demo --data data/demo --out docs

Writes into ``--out``:

- ``showcase_predictions.png``: the model on validation images of its own data (input | truth | probability |
  overlay; hits, misses, false positives and true negatives in turn: ``cxrseg.evaluation.examples``), titled with
  what the model was trained on (for the demo model: synthetic images, not real X-rays).
- ``showcase_app.png``: the web app (``cxrseg.app.web``) after uploading one of those images, taken with Playwright in
  Debian's Chromium (``/usr/bin/chromium``; ``--no-sandbox`` when run as root, which Chromium's sandbox refuses).
  ``--no-app`` skips it.

It trains nothing: it only reads ``--model`` and ``--data``. It writes only these two files and refuses to replace
a file of the same name that it did not write (``cxrseg.plots.is_cxrseg_figure``; the screenshot is replaced only
when it was made by this script, marked in its PNG text). To show them, point the README's and docs' picture links
at them (docs/app.md's ``app.png`` is still the browser test's stand-in model).
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from PIL import Image, PngImagePlugin

from cxrseg.errors import CxrsegError, DataError
from cxrseg.files import check_output_file
from cxrseg.hub.card import training_data
from cxrseg.imageio import read_image
from cxrseg.inference.segmenter import load_segmenter
from cxrseg.plots import is_cxrseg_figure, plot_prediction_grid

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"]
SCREENSHOT_MARK = ("Software", "cxrseg scripts/showcase.py")  # PNG text that says this script made the screenshot


def showcase_predictions(model: str, data: str, out: Path, n: int = 4) -> Path:
    """``out/showcase_predictions.png``: ``n`` validation images of ``data`` predicted by ``model``."""
    from cxrseg.evaluation.examples import prediction_examples

    path = check_output_file(out / "showcase_predictions.png", is_cxrseg_figure, inputs=[data])
    segmenter = load_segmenter(model, device="cpu")
    examples = prediction_examples(segmenter, data, "val", n)
    trained_on = training_data(segmenter.model_dir) or "data not recorded with the model"
    title = f"{Path(segmenter.source).name}, trained on {trained_on}"
    plot_prediction_grid(examples, path, segmenter.output_names, title=title)
    return path


def is_showcase_screenshot(path: Path) -> bool:
    """Whether ``path`` is a PNG whose text carries :data:`SCREENSHOT_MARK`."""
    try:
        with Image.open(path) as image:
            return image.info.get(SCREENSHOT_MARK[0]) == SCREENSHOT_MARK[1]
    except OSError:
        return False


def app_screenshot(model: str, image: Path, out: Path, chromium: str = CHROMIUM) -> Path:
    """``out/showcase_app.png``: the app for ``model`` after uploading ``image`` (a 256-colour PNG, kept small)."""
    from playwright.sync_api import sync_playwright

    from cxrseg.app.web import create_app, launch
    from cxrseg.inference.ensemble import load_models

    path = check_output_file(out / "showcase_app.png", is_showcase_screenshot)
    demo = create_app(load_models(model, device="cpu"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    args = CHROMIUM_ARGS + (["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=args)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#upload input[type=file]").set_input_files(image)
            page.locator("#message").get_by_text(image.name).wait_for()
            page.locator("#findings td").first.wait_for()
            raw = out / ".showcase_app.png.partial"
            page.screenshot(path=raw, type="png")
            browser.close()
    finally:
        demo.close()
    info = PngImagePlugin.PngInfo()
    info.add_text(*SCREENSHOT_MARK)
    Image.open(raw).convert("RGB").quantize(256).save(raw, format="PNG", optimize=True, pnginfo=info)
    raw.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/demo", help="a trained model folder (default outputs/demo)")
    parser.add_argument("--data", default="data/demo", help="its data, with the model's splits.json (data/demo)")
    parser.add_argument("--out", default="docs", help="where the pictures go (default docs)")
    parser.add_argument("--n", type=int, default=4, help="validation images in the predictions picture (4)")
    parser.add_argument("--no-app", action="store_true", help="skip the app screenshot (no browser needed)")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"the Chromium executable ({CHROMIUM})")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        predictions = showcase_predictions(args.model, args.data, out, args.n)
        print(f"Wrote {predictions}")
        if not args.no_app:
            print(f"Wrote {app_screenshot(args.model, _showcase_image(args.model, args.data), out, args.chromium)}")
    except CxrsegError as error:  # one line, as the cxrseg command prints it
        print(f"error: {error}")
        return 2
    return 0


def _showcase_image(model: str, data: str) -> Path:
    """The validation image of ``data`` (the model's ``splits.json``) with the largest finding (mask area; the first
    image when none has one): what the screenshot uploads."""
    splits = load_segmenter(model, device="cpu").splits
    if not splits or not splits.get("val"):
        raise DataError(f"{model} has no splits.json with validation images: give a model that training wrote.")
    image_ids = sorted(splits["val"])
    areas = [int((read_image(Path(data) / "masks" / "train" / f"{i}.png") > 0).sum()) for i in image_ids]
    return Path(data) / "images" / "train" / f"{image_ids[areas.index(max(areas))]}.png"


if __name__ == "__main__":
    raise SystemExit(main())
