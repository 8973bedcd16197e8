"""Type stub for the compiled header scanner (_ext/header.pyx)."""

from collections.abc import Iterable

IMPLICIT_VR_LE: int
EXPLICIT_VR_LE: int
EXPLICIT_VR_BE: int

TRUNCATED: int
END: int
PAST_LAST: int
PIXEL_DATA: int

class HeaderScanner:
    tags: tuple[int, ...]
    def __init__(self, tags: Iterable[int]) -> None: ...
    def scan(
        self, buffer: bytes | bytearray | memoryview, syntax: int = ...
    ) -> tuple[tuple[bytes | None, ...], int, int]: ...
