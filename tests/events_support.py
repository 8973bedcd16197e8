"""Events as the service makes them, for observer unit tests."""

from __future__ import annotations

import time
from typing import Any

from fastscp.events import AssociationCounts, AssociationInfo


def assoc_info(i: int = 1, calling: str = "SCU1", **kw: Any) -> AssociationInfo:
    """An association opened two seconds ago, 2 of 3 contexts accepted."""
    fields: dict[str, Any] = dict(
        association_id=f"run-{i}", peer=f"10.0.0.{i}:4000{i}", calling_ae=calling, called_ae="FASTSCP",
        tls=False, contexts_proposed=3, contexts_accepted=2, started_at=time.time() - 2.0,
        started=time.monotonic() - 2.0)
    fields.update(kw)
    return AssociationInfo(**fields)


def counts(**kw: Any) -> AssociationCounts:
    return AssociationCounts(**kw)
