"""Type stub for the compiled PDU framer (_ext/framer.pyx)."""

from collections.abc import Callable
from typing import Any, Final, Literal

from .writer import InstanceFile

# the event kinds are literals, so that a test of item[0] narrows next_event()'s tuple
EV_PDU: Final = 1
EV_COMMAND: Final = 2
EV_DATASET: Final = 3
ABORT_UNRECOGNIZED_PDU: int
ABORT_UNEXPECTED_PDU: int
ABORT_INVALID_PARAMETER: int

class FramingError(Exception):
    reason: int
    def __init__(self, reason: int, message: str) -> None: ...

class PDUFramer:
    max_pdata: int
    max_other: int
    bytes_received: int
    sunk: int
    def __init__(self, max_pdata: int = ..., max_other: int = ...) -> None: ...
    @property
    def dataset_in_progress(self) -> int | None: ...
    @property
    def buffered(self) -> int: ...
    def get_buffer(self, sizehint: int = ...) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def sink_dataset(self, writer: InstanceFile, hash_update: Callable[[memoryview], object] | None,
                     context_id: int, limit: int) -> None: ...
    def unsink(self) -> None: ...
    def discard(self) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_event(
        self,
    ) -> (
        tuple[Literal[1], int, bytes] | tuple[Literal[2], int, bytes] | tuple[Literal[3], int, memoryview, bool] | None
    ): ...

def decode_command(data: bytes | bytearray | memoryview) -> dict[int, Any]: ...
