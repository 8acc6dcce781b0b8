"""labelaudit: find the wrong annotations in medical image segmentation datasets."""

__version__ = "0.1.0"
