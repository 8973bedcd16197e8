"""Names the receiver itself writes in the storage tree besides instances.

A leaf module: reconcile (catalog/) skips these files when it looks for
instances, and the scan-sheet writer (pipeline/) names its output with them,
so that the two cannot drift apart. Hidden names (``.incoming/``,
``.fastscp.lock``, ``.pipeline/``) are skipped by their leading dot.
"""

from __future__ import annotations

__all__ = ["RECEIVER_FILES", "SCAN_SHEET_HTML", "SCAN_SHEET_PNG"]

SCAN_SHEET_HTML = "scan_sheet.html"
SCAN_SHEET_PNG = "scan_sheet.png"

# files the receiver writes in a study folder: never taken for foreign files
RECEIVER_FILES = frozenset({SCAN_SHEET_HTML, SCAN_SHEET_PNG})
