"""Conversion of raw downloads (SIIM-ACR DICOMs + RLE, ChestX-Det JSON, plain folders) into the PNG layout."""
