"""cxrseg: chest X-ray segmentation with UperNet-Swin, the Hugging Face Trainer and Accelerate."""

__version__ = "0.1.0"
