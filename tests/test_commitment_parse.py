"""``services.commitment.parse_action``: the N-ACTION's Action Information
(PS3.4 Table J.3-1) decoded by the one identifier decoder
(``services/identifiers.py``), so it refuses what a C-FIND identifier would:
a cut data set, and a deflated one that inflates past ``MAX_INFLATED``."""

from __future__ import annotations

import zlib

import pytest
from pydicom.dataset import Dataset
from test_commitment_network import action_information

from fastscp.services.commitment import Reference, parse_action
from fastscp.services.identifiers import MAX_INFLATED, encode_identifier

CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"]


def _action(transaction: str = "1.2.3.4", uids: tuple[str, ...] = ("1.2.3.4.5", "1.2.3.4.6")) -> Dataset:
    return action_information(transaction, [(CT, uid) for uid in uids])


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_every_accepted_syntax_decodes(syntax: str) -> None:
    transaction, refs = parse_action(encode_identifier(_action(), syntax), syntax)
    assert transaction == "1.2.3.4"
    assert refs == (Reference(CT, "1.2.3.4.5"), Reference(CT, "1.2.3.4.6"))


@pytest.mark.parametrize("syntax", SYNTAXES[:3])
def test_a_cut_action_is_refused_not_read_in_part(syntax: str) -> None:
    data = encode_identifier(_action(), syntax)
    for cut in (len(data) - 1, len(data) - 20, 9):
        with pytest.raises(ValueError, match="undecodable action information"):
            parse_action(data[:cut], syntax)


def test_a_deflated_action_inflating_past_the_bound_is_refused() -> None:
    ds = _action()
    ds.ReferencedSOPSequence[0].add_new(0x00091010, "OB", bytes(MAX_INFLATED + 1024))  # zeros: deflates small
    raw = encode_identifier(ds, "1.2.840.10008.1.2.1")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflater.compress(raw) + deflater.flush()
    assert len(data) < 100_000
    with pytest.raises(ValueError, match="inflates past"):
        parse_action(data, "1.2.840.10008.1.2.1.99")


def test_missing_parts_say_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"no Transaction UID \(0008,1195\)"):
        parse_action(encode_identifier(_action(transaction=""), SYNTAXES[1]), SYNTAXES[1])
    with pytest.raises(ValueError, match=r"no Referenced SOP Sequence \(0008,1199\) items"):
        parse_action(encode_identifier(_action(uids=()), SYNTAXES[1]), SYNTAXES[1])
