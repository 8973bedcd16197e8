# cython: language_level=3
"""PDU framer (placeholder until the receiver core lands)."""
