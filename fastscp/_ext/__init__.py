"""Compiled hot path (built from the top-level _ext/ Cython sources)."""
