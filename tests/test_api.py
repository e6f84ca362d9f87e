"""The public API: ``import cxrseg`` is cheap (no torch: the ``cxrseg`` command imports it), and each exported name
is the very object of its home module, imported on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import cxrseg

HOMES = {
    "train": "cxrseg.training.train",
    "parse_recipe": "cxrseg.config",
    "evaluate": "cxrseg.evaluation.evaluate",
    "predict": "cxrseg.inference.predict",
    "load_segmenter": "cxrseg.inference.segmenter",
    "load_ensemble": "cxrseg.inference.ensemble",
    "read_image": "cxrseg.imageio.images",
    "LabelSet": "cxrseg.labels",
    "push_folder": "cxrseg.hub.push",
}


def test_import_cxrseg_loads_no_heavy_library():
    code = (
        "import sys, cxrseg; "
        "print(sorted({'torch', 'transformers', 'datasets', 'cv2', 'numpy'} & set(sys.modules)), cxrseg.__version__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["[]", cxrseg.__version__]


@pytest.mark.parametrize("name", sorted(HOMES))
def test_exported_name_is_its_home_modules_object(name):
    assert getattr(cxrseg, name) is getattr(importlib.import_module(HOMES[name]), name)


def test_all_lists_the_exports():
    assert sorted(cxrseg.__all__) == sorted(HOMES)
    namespace: dict = {}
    exec("from cxrseg import *", namespace)
    assert {name for name in namespace if not name.startswith("__")} == set(HOMES)
    assert set(HOMES) <= set(dir(cxrseg))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        cxrseg.no_such_name  # noqa: B018
    assert not hasattr(cxrseg, "Segmenter")
