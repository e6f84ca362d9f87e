"""Data sources, splits and transforms. Every source ends as the PNG layout or a saved ``datasets`` dataset."""
