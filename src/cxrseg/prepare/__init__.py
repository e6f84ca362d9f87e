"""Conversion of raw downloads (SIIM-ACR DICOMs + RLE, ChestX-Det JSON, plain folders) into the PNG layout.

One module per source (:mod:`siim`, :mod:`chestxdet`, :mod:`folder`) and per shared job: :mod:`writer` (the run:
``PrepareOptions``, ``write_layout``), :mod:`problems` (``problems.csv`` rows, the summary, the ImageId rule),
:mod:`resize` (how images and masks shrink), :mod:`export` (``datasets`` save and push), :mod:`dicom`, :mod:`rle`.
"""
