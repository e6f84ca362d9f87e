"""The Colab notebook runs end to end, offline, against a tiny local model, and draws its figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from cxrseg.labels import PNEUMOTHORAX
from cxrseg.model import build_model
from tests.conftest import TINY_MODEL_CONFIG

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks/demo.ipynb"


@pytest.mark.slow
def test_demo_notebook_runs_and_draws(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, processor = build_model(None, TINY_MODEL_CONFIG, PNEUMOTHORAX, 64)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    monkeypatch.setenv("CXRSEG_MODEL", str(tmp_path / "model"))
    monkeypatch.setenv("CXRSEG_SKIP_INSTALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    run_in = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources=run_in)
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "install skipped" in text
    assert f"{tmp_path / 'model'} → {{0: 'background', 1: 'pneumothorax'}}" in text
    assert "pneumothorax: max probability" in text
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 1  # the overlay and probability map
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # to look at when this fails
