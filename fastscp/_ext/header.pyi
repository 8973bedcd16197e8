"""Type stub for the compiled header scanner (_ext/header.pyx)."""

from collections.abc import Callable, Iterable

IMPLICIT_VR_LE: int
EXPLICIT_VR_LE: int
EXPLICIT_VR_BE: int

TRUNCATED: int
END: int
PAST_LAST: int
PIXEL_DATA: int

LONG_LENGTH_VRS: frozenset[bytes]

class HeaderScanner:
    tags: tuple[int, ...]
    def __init__(self, tags: Iterable[int], group: int | None = None) -> None: ...
    def scan(
        self, buffer: bytes | bytearray | memoryview, syntax: int = ...
    ) -> tuple[tuple[bytes | None, ...], int, int]: ...

def walk_to_end(
    head: bytes | bytearray | memoryview,
    pos: int,
    size: int,
    syntax: int,
    read_at: Callable[[int, int], bytes],
) -> None: ...

def decode_values_into(
    fields: dict[str, object],
    values: tuple[bytes | None, ...],
    names: tuple[str, ...],
    kinds: tuple[int, ...],
    encoding: str,
    encodings: list[str],
    little: bool,
    decode_code: Callable[[bytes], str],
    decode_text: Callable[[bytes, list[str]], str],
    decode_name: Callable[[bytes, list[str]], str],
    decode_int: Callable[[bytes], int | None],
    codes: dict[bytes, str],
    texts: dict[bytes, str],
    unique: int,
) -> None: ...

SHARED_MAX: int
