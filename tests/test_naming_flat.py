from pathlib import PurePosixPath

from fastscp.instance import InstanceInfo
from fastscp.storage.naming import FlatNaming, safe_component


def test_flat_uses_sop_instance_uid():
    info = InstanceInfo(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2")
    assert FlatNaming().relative_path(info) == PurePosixPath("1.2.3.4.dcm")


def test_safe_component_blocks_traversal():
    assert "/" not in safe_component("../../etc/passwd")
    assert not safe_component("../../etc").startswith(".")
    assert safe_component("") == "UNKNOWN"
    long = safe_component("x" * 1000)
    assert len(long) <= 64 and long != safe_component("x" * 999)
