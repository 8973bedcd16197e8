"""Whether a process still runs, for files that name the process that wrote
them (the status endpoint's discovery file, DuckDB's spill files). A leaf
module: it imports nothing of the project."""

from __future__ import annotations

import os

__all__ = ["running"]


def running(pid: int) -> bool:
    """True while a process ``pid`` exists (``kill(pid, 0)``), also another
    user's, whose signal would be refused. PIDs are this host's namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists; it is another user's
        return True
    return True
