"""Reading radiographs: PNG, JPEG, TIFF, BMP, 16-bit, palette and DICOM files → uint8 gray ``[H, W]``, one rule."""

from cxrseg.imageio.images import IMAGE_SUFFIXES, read_image, read_image_geometry, write_png
from cxrseg.imageio.pixels import to_gray

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_image_geometry", "to_gray", "write_png"]
