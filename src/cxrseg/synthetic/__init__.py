"""Radiograph-like synthetic data, so every command runs without downloads: the drawing functions
(:mod:`~cxrseg.synthetic.radiographs`) and the demo datasets they fill (:mod:`~cxrseg.synthetic.demo_data`)."""

from cxrseg.synthetic.demo_data import DEMO_DATA_MAKERS, make_demo_data, make_multilabel_demo_data
from cxrseg.synthetic.radiographs import (
    MULTILABEL_DEMO_CLASSES,
    synthetic_multilabel_radiograph,
    synthetic_radiograph,
)

__all__ = [
    "DEMO_DATA_MAKERS",
    "MULTILABEL_DEMO_CLASSES",
    "make_demo_data",
    "make_multilabel_demo_data",
    "synthetic_multilabel_radiograph",
    "synthetic_radiograph",
]
