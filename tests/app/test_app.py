"""The web app: in headless Chromium (Debian's, driven by Playwright) a radiograph is uploaded and the page shows what
the model computes; bad inputs give a message in the page and the app serves the next one; `cxrseg app` and the
Space's app.py serve the same app from a real model folder.

The browser test's model is a stand-in whose probability is the gray level (tests/evaluation/test_evaluate.py), so
the page's numbers can be checked against values written by hand. CXRSEG_APP_SCREENSHOT=PATH makes it also
write its screenshot there.
"""

from __future__ import annotations

import os
import re
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from transformers import UperNetForSemanticSegmentation

from cxrseg.cli import main
from cxrseg.imageio.dicom import write_dicom
from cxrseg.imageio.images import read_image
from cxrseg.inference.ensemble import load_models
from cxrseg.inference.preprocessor import Preprocessor
from cxrseg.inference.segmenter import Segmenter
from cxrseg.labels import PNEUMOTHORAX, TASKS, pack_multilabel
from cxrseg.model import IMAGENET_MEAN, IMAGENET_STD
from cxrseg.plots import class_colours
from cxrseg.postprocessing.rules import PostProcess
from tests.conftest import save_tiny_model
from tests.evaluation.test_evaluate import IntensityModel

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright's own browsers are not used
CHROMIUM_ARGS = [  # offline: no background connections that a closed network would refuse
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NIH_EXAMPLE = REPO / "src/cxrseg/app/examples/nih_cxr14_00000001_000.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stand_in_segmenter() -> Segmenter:
    """Probability = gray level / 255 at a 256² working size, with a postprocess.json-like rule."""
    return Segmenter(
        IntensityModel(),
        PNEUMOTHORAX,
        Preprocessor((256, 256), IMAGENET_MEAN, IMAGENET_STD),
        PostProcess(top_threshold=0.9, min_area=50, bottom_threshold=0.75, image_size=256),
        "stand-in: probability = gray level",
        Path("stand-in"),
        True,
        torch.device("cpu"),
    )


def model_output(segmenter: Segmenter, image: np.ndarray, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(peak probability per class at the working size [K], masks bool [K, H, W] at the image's size) as the model
    computes them."""
    probs = segmenter.probabilities(segmenter.preprocessor(image).unsqueeze(0))[0]
    at_size = segmenter.resize_probabilities(probs, image.shape)
    masks = (at_size >= 0.5).numpy() if raw else segmenter.masks(probs, at_size)
    return probs.amax((1, 2)).numpy(), masks.astype(bool)


def test_without_gradio_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio fails
    monkeypatch.delitem(sys.modules, "cxrseg.app.web", raising=False)
    assert main(["app", "--model", "anything"]) == 2
    assert "pip install 'cxrseg[app]'" in capsys.readouterr().err


def test_a_missing_model_or_a_bad_limit_is_a_user_error(tmp_path, capsys):
    assert main(["app", "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["app", "--model", str(tmp_path), "--max-megapixels", "0"]) == 2
    assert "--max-megapixels must be a positive number" in capsys.readouterr().err


def test_a_bug_gives_a_message_in_the_page_and_a_traceback_in_the_log(tmp_path, monkeypatch, caplog):
    import cxrseg.app.web

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cxrseg.app.web, "segment_image", broken)
    cv2.imwrite(str(tmp_path / "scan.png"), np.zeros((8, 8), np.uint8))
    demo = cxrseg.app.web.create_app(stand_in_segmenter())
    analyse = next(f.fn for f in demo.fns.values() if f.api_name == "segment")
    message, *outputs = analyse(str(tmp_path / "scan.png"), False)
    assert "Cannot use scan.png</b>: internal error (RuntimeError); see the server log." in message
    *outputs, seg = outputs
    assert outputs == [None, None, "", None] and "Traceback" not in message
    assert (seg.value, seg.visible) == (None, False)  # no DICOM SEG download
    assert "RuntimeError: a bug" in caplog.text  # the traceback, in the server's log


@pytest.mark.slow
def test_the_app_in_a_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    from cxrseg.app.web import create_app, example_inputs, launch

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"
    segmenter = stand_in_segmenter()
    nih = cv2.imread(str(NIH_EXAMPLE), cv2.IMREAD_GRAYSCALE)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    cv2.imwrite(str(tmp_path / "deep.png"), nih.astype(np.uint16) * 200)  # 16-bit: read with the min-max stretch
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((5200, 5000), np.uint8))  # 26 MP, over the 25 MP limit
    no_pixels = write_dicom(tmp_path / "no_pixels.dcm", np.zeros((64, 64), np.uint8))
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    examples = example_inputs(tmp_path)

    demo = create_app(segmenter, examples)
    port = free_port()
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(60_000)  # generous: CI machines are shared
            outside = []  # requests to anywhere but this server
            page.on(
                "request", lambda r: None if r.url.startswith(f"http://127.0.0.1:{port}/") else outside.append(r.url)
            )
            page.goto(f"http://127.0.0.1:{port}/")

            def upload(path: Path, expect: str) -> str:
                clear = page.locator("#upload button[aria-label=Clear]")
                if clear.count():
                    clear.click()
                page.locator("#upload input[type=file]").set_input_files(path)
                page.locator("#message").get_by_text(expect).wait_for()
                return page.locator("#message").inner_text()

            def fetch(selector: str, attribute: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
                body = page.request.get(page.locator(selector).get_attribute(attribute)).body()
                return cv2.imdecode(np.frombuffer(body, np.uint8), flags)

            def shown(column: str) -> str:
                return page.locator(f"#findings td.{column}").inner_text()

            # a radiograph: the score, overlay and mask the model computes, under its postprocess.json
            upload(NIH_EXAMPLE, NIH_EXAMPLE.name)
            (score,), (mask,) = model_output(segmenter, nih)
            assert score == pytest.approx(segmenter.preprocessor.resize(nih)[0].max() / 255, abs=1e-6)
            assert shown("score") == f"{score:.3f}" and shown("present") == "yes"
            assert shown("area") == f"{mask.sum():,} px"
            overlay = fetch("#overlay img", "src", cv2.IMREAD_COLOR)[..., ::-1]  # RGB
            assert overlay.shape == (*nih.shape, 3)
            np.testing.assert_array_equal((overlay != nih[..., None]).any(-1), mask)  # changed exactly on the mask
            np.testing.assert_array_equal(fetch("#mask a[download]", "href"), mask * np.uint8(255))
            screenshot(page, tmp_path / "app.png")

            # inputs it cannot use: a message in the page, and the next request is answered
            for path, message in [
                (tmp_path / "corrupt.png", "Cannot use corrupt.png: not a readable image file"),
                (tmp_path / "huge.png", "Cannot use huge.png: 5000 x 5200 pixels (26.0 megapixels) is larger than"),
                (no_pixels, "Cannot use no_pixels.dcm: the DICOM file has no pixel data"),
            ]:
                text = upload(path, message)
                assert str(tmp_path) not in text and "Traceback" not in text
                assert page.locator("#overlay img").count() == 0 and page.locator("#findings td").count() == 0
            upload(tmp_path / "deep.png", "deep.png")
            deep = cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_UNCHANGED).astype(np.float64)
            stretched = np.rint((deep - deep.min()) * 255 / (deep.max() - deep.min())).astype(np.uint8)
            assert shown("score") == f"{model_output(segmenter, stretched)[0][0]:.3f}"

            # an example DICOM with PixelSpacing: the area in cm²; the raw threshold toggle
            page.locator("#upload button[aria-label=Clear]").click()
            page.get_by_text(examples[1].name).click()
            text = page.locator("#message").get_by_text("pixel spacing 0.8 × 0.8 mm")
            text.wait_for()
            image = read_image(examples[1])
            for raw in (False, True):
                if raw:
                    page.locator("#raw-threshold input[type=checkbox]").check()
                    page.locator("#message").get_by_text("raw threshold").wait_for()
                pixels = model_output(segmenter, image, raw)[1][0].sum()
                assert shown("area") == f"{pixels * 0.64 / 100:.2f} cm² ({pixels:,} px)"
            assert outside == []  # the page loads nothing from outside the server
            browser.close()
    finally:
        demo.close()


def screenshot(page, path: Path) -> None:
    """The page as a 256-colour PNG (the README's picture stays small); also to $CXRSEG_APP_SCREENSHOT if set."""
    page.screenshot(path=path)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    if os.environ.get("CXRSEG_APP_SCREENSHOT"):
        Path(os.environ["CXRSEG_APP_SCREENSHOT"]).write_bytes(path.read_bytes())
    assert path.stat().st_size < 300_000


def wait_for_server(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s")


def segment_via_api(url: str, path: Path) -> tuple[str, str, str, str, str, str | None]:
    """What the app returns for ``path`` (message, overlay file, probability file, findings table, mask file,
    DICOM SEG file or None), through Gradio's HTTP API."""
    from gradio_client import Client, handle_file

    result = Client(url, verbose=False).predict(handle_file(path), False, api_name="/segment")
    # An output whose visibility changes (the DICOM SEG, shown for DICOM uploads only) comes as a Gradio update.
    return tuple(out["value"] if isinstance(out, dict) and out.get("__type__") == "update" else out for out in result)


def segment_in_process(demo, path: Path) -> tuple[str, str, str, str, str, str | None]:
    """What the app ``demo``, served in this process on a free port, returns for ``path``."""
    from cxrseg.app.web import launch

    port = free_port()
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        return segment_via_api(f"http://127.0.0.1:{port}/", path)
    finally:
        demo.close()


def check_served_result(result: tuple, model: Path | list[Path], image: np.ndarray, name: str) -> None:
    """The page's outputs are what the model (several: their ensemble) computes: every class's score in its colour,
    the mask PNG."""
    message, overlay, _, table, mask, seg = result
    assert seg is None  # a PNG: no DICOM SEG
    scores, masks = model_output(load_models(model, device="cpu"), image)
    assert name in message and f"{image.shape[1]} × {image.shape[0]} px" in message
    assert re.findall(r'class="score">([0-9.]+)<', table) == [f"{score:.3f}" for score in scores]
    swatches = re.findall(r"background:rgb\((\d+), (\d+), (\d+)\)", table)
    assert [tuple(map(int, rgb)) for rgb in swatches] == [tuple(c) for c in class_colours(len(scores)).tolist()]
    expected = masks[0] * np.uint8(255) if len(masks) == 1 else pack_multilabel(masks)
    np.testing.assert_array_equal(cv2.imread(mask, cv2.IMREAD_UNCHANGED), expected)
    assert cv2.imread(overlay).shape == (*image.shape, 3)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, Path, Path, np.ndarray]:
    """(a tiny pneumothorax model folder, a tiny multi-label one, an image file, its pixels)."""
    folder = tmp_path_factory.mktemp("served")
    image = np.random.default_rng(0).integers(0, 256, (80, 100), dtype=np.uint8)
    cv2.imwrite(str(folder / "scan.png"), image)
    multilabel = save_tiny_model(folder / "multilabel", labels=TASKS["chestxdet"], seed=2)
    return save_tiny_model(folder / "model", seed=4), multilabel, folder / "scan.png", image


@pytest.mark.slow
def test_the_command_serves_a_model_folder(served):
    model, _, path, image = served
    port = free_port()
    command = [sys.executable, "-m", "cxrseg", "app", "--model", str(model), "--port", str(port)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_server(process, f"http://127.0.0.1:{port}/")
        result = segment_via_api(f"http://127.0.0.1:{port}/", path)
    finally:
        process.terminate()
        process.wait(timeout=30)
    check_served_result(result, model, image, path.name)


@pytest.mark.slow
def test_the_space_serves_the_model_that_CXRSEG_MODEL_names(served, monkeypatch, capsys):
    """Here a multi-label model: every finding is listed, in its colour."""
    _, model, path, image = served
    monkeypatch.delenv("CXRSEG_MODEL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "app.py"), run_name="space")
    assert exit_info.value.code == 2 and "set CXRSEG_MODEL" in capsys.readouterr().err

    monkeypatch.setenv("CXRSEG_MODEL", str(model))
    demo = runpy.run_path(str(REPO / "app.py"), run_name="space")["demo"]  # as a Space runs it, but not launched
    result = segment_in_process(demo, path)
    check_served_result(result, model, image, path.name)


@pytest.mark.slow
def test_the_app_serves_an_ensemble(served, tmp_path):
    """Two models: the page shows their ensemble's scores and mask (which differ from either model's)."""
    from cxrseg.app.web import load_app

    model, _, path, image = served
    other = save_tiny_model(tmp_path / "other", seed=7)
    network = UperNetForSemanticSegmentation.from_pretrained(other)
    network.decode_head.classifier.bias.data = torch.tensor([0.0, 3.0])  # confident: unlike the ~0.5 of `model`
    network.save_pretrained(other)
    models = [model, other]
    demo = load_app([str(m) for m in models], device="cpu")
    result = segment_in_process(demo, path)
    check_served_result(result, models, image, path.name)
    for member in models:
        scores = model_output(load_models(member, device="cpu"), image)[0]
        assert re.findall(r'class="score">([0-9.]+)<', result[3]) != [f"{score:.3f}" for score in scores]


def test_a_dicom_upload_offers_a_dicom_seg_of_its_masks(tmp_path):
    import highdicom as hd
    from pydicom.data import get_testdata_file

    from cxrseg.app.web import create_app

    model = save_tiny_model(tmp_path / "model", seed=4)
    source = get_testdata_file("CT_small.dcm", download=False)  # pydicom's real file: patient, study, frame of ref
    message, _, _, _, mask, seg = segment_in_process(create_app(load_models(model, device="cpu")), Path(source))
    assert "CT_small.dcm" in message and seg.endswith("CT_small_seg.dcm")
    header = pydicom.dcmread(source, stop_before_pixels=True)
    seg = hd.seg.segread(seg)
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (header.StudyInstanceUID, header.FrameOfReferenceUID)
    assert seg.ManufacturerModelName == "model"  # the folder's name, not its local path
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[header.SOPInstanceUID])[0, ..., 0]
    np.testing.assert_array_equal(pixels * 255, cv2.imread(mask, cv2.IMREAD_UNCHANGED))


def test_the_page_says_what_the_model_was_trained_on(tmp_path):
    from cxrseg.app.web import create_app
    from cxrseg.config import parse_recipe, save_recipe

    model = save_tiny_model(tmp_path / "model", seed=4)

    def header() -> str:
        demo = create_app(load_models(model, device="cpu"))
        (block,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-info"]
        return block.value

    assert "Trained on: not recorded with this model" in header()
    save_recipe(parse_recipe(["--config", "recipe/demo.yaml"]), model / "recipe.yaml")  # the demo: synthetic data
    assert "Trained on: cxrseg's synthetic demo images (drawn radiograph-like pictures, not real X-rays)" in header()
