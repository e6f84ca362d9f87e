"""Radiograph-like synthetic data, so every command runs without downloads: the drawing functions
(:mod:`~cxrseg.synthetic.radiographs`) and the demo datasets they fill (:mod:`~cxrseg.synthetic.demo_data`)."""

from cxrseg.synthetic.demo_data import (
    ANATOMY_DEMO_LABELS,
    DEMO_DATA_MAKERS,
    make_anatomy_demo_data,
    make_demo_data,
    make_multilabel_demo_data,
)
from cxrseg.synthetic.radiographs import (
    MULTILABEL_DEMO_CLASSES,
    synthetic_anatomy_radiograph,
    synthetic_multilabel_radiograph,
    synthetic_radiograph,
)

__all__ = [
    "ANATOMY_DEMO_LABELS",
    "DEMO_DATA_MAKERS",
    "MULTILABEL_DEMO_CLASSES",
    "make_anatomy_demo_data",
    "make_demo_data",
    "make_multilabel_demo_data",
    "synthetic_anatomy_radiograph",
    "synthetic_multilabel_radiograph",
    "synthetic_radiograph",
]
