"""services/registry.py: the SOP classes it writes out (so that negotiation
needs no pydicom) are the modules' own, and each module is imported only
at its first request."""

from __future__ import annotations

import subprocess
import sys

from fastscp.protocol.commands import CFindRequest, CGetRequest, CMoveRequest
from fastscp.qr.model import InformationModel
from fastscp.services import registry


def test_written_out_sop_classes_are_the_models() -> None:
    assert registry.FIND_SOP_CLASSES == {m.find_uid for m in InformationModel}
    assert registry.MOVE_SOP_CLASSES == {m.move_uid for m in InformationModel}
    assert registry.GET_SOP_CLASSES == {m.get_uid for m in InformationModel}
    served = registry.modules(True)
    assert served[CFindRequest].sop_classes == served[CFindRequest].group.module(CFindRequest).sop_classes
    for request_type in (CMoveRequest, CGetRequest):
        module = served[request_type]
        assert module.sop_classes == module.group.module(request_type).sop_classes


def test_no_index_no_modules() -> None:
    assert registry.modules(False) == {}


def test_modules_wait_for_their_first_request() -> None:
    code = ("import sys\nfrom fastscp.services import registry\nserved = registry.modules(True)\n"
            "assert not any(m.group.loaded for m in served.values())\n"
            "assert 'pydicom' not in sys.modules and 'fastscp.services.query' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
