"""The Colab notebook, top to bottom, both ways: it trains the demo model (a small setting, through the users' code
path), evaluates it, segments an image, pushes it (the replaced HfApi commits where the local Hub server serves) and
reloads it from there; then, given that Hub id as ``CXRSEG_MODEL`` and no token, it skips training and pushing and
gives the same masks and metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.hub.test_hub import TOKEN

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks/demo.ipynb"
SMALL = {"CXRSEG_DEMO_EPOCHS": "1", "CXRSEG_DEMO_IMAGES": "24"}  # the recipe's defaults: 30 epochs, 400 images


def run_notebook(folder: Path, mirrors: Path) -> list[dict]:
    """Execute the notebook in ``folder`` (its working directory); returns the code cells' outputs. A first cell
    replaces HfApi's upload API (the one part of the Hub no local server implements) with the tests' FakeHub."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    replace_upload_api = (
        "from pathlib import Path\n\nimport cxrseg.hub.access\nfrom tests.hub_server import FakeHub\n\n"
        f"cxrseg.hub.access.HfApi = FakeHub(Path({str(mirrors)!r}))"
    )
    notebook.cells.insert(0, nbformat.v4.new_code_cell(replace_upload_api))
    folder.mkdir()
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, folder / "executed.ipynb")  # to look at when this fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    return outputs


def text_of(outputs: list[dict]) -> str:
    return "".join(output.get("text", "") for output in outputs)


def figures(outputs: list[dict]) -> int:
    return sum("image/png" in output.get("data", {}) for output in outputs)


@pytest.mark.slow
def test_the_notebook_trains_pushes_and_reloads_then_runs_from_the_hub_id(served_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRSEG_SOURCE", str(ROOT))
    monkeypatch.setenv("CXRSEG_SKIP_INSTALL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(ROOT)]))  # cxrseg and tests.hub_server
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("CXRSEG_HUB_REPO", "notebook-demo")
    for name, value in SMALL.items():
        monkeypatch.setenv(name, value)

    trained = tmp_path / "trained"
    outputs = run_notebook(trained, served_hub.mirrors)
    text = text_of(outputs)
    assert "install skipped" in text and "trained here (1 epochs, 24 images)" in text
    assert "eval_dice" in text  # the training cell's metrics
    assert len(list((trained / "data/demo/images/train").glob("*.png"))) == 24
    assert [message for _, message in served_hub.log("me/notebook-demo")] == ["Upload cxrseg model"]
    assert "Pushed: https://huggingface.co/me/notebook-demo/commit/" in text
    assert "me/notebook-demo → {0: 'background', 1: 'pneumothorax'}" in text  # reloaded from the server
    assert "pneumothorax: max probability" in text
    assert figures(outputs) == 3  # training curves, PR curve, image | overlay | probability
    assert served_hub.files("me/notebook-demo") >= {"model.safetensors", "README.md", "trainer_state.json"}

    # The same notebook given the pushed Hub id, without a token: no training, no push, same results.
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setenv("CXRSEG_MODEL", "me/notebook-demo")
    monkeypatch.setenv("CXRSEG_DATA", str(trained / "data/demo"))
    from_hub = tmp_path / "from_hub"
    outputs = run_notebook(from_hub, served_hub.mirrors)
    text = text_of(outputs)
    assert "CXRSEG_MODEL=me/notebook-demo: training skipped" in text and not (from_hub / "outputs").exists()
    assert "No Hugging Face token: push skipped" in text
    assert len(served_hub.log("me/notebook-demo")) == 1
    assert figures(outputs) == 3
    for mask in ("masks/radiograph.png", "probabilities/radiograph.png", "overlays/radiograph.png"):
        assert (from_hub / "predictions" / mask).read_bytes() == (trained / "predictions" / mask).read_bytes()
    local, hub = (json.loads((f / "evaluation/metrics.json").read_text()) for f in (trained, from_hub))
    for metrics in (local, hub):
        del metrics["model"], metrics["images"], metrics["data"]
    assert hub == local
