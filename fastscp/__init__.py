"""fastscp: a fast, dependable DICOM Storage SCP."""

__version__ = "0.1.0"
