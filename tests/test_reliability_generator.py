"""The fault generator of tests/test_reliability_faults.py, checked offline.

That test trusts its generator to say which faults sent a whole dataset: a
stored instance that the generator did not call complete fails the test. So
the generator must never form a valid stream by accident. (It once did: a
last data-set PDU cut 4 bytes short, then a 10-byte A-ABORT whose first 4
bytes finished the PDU; the receiver rightly stored a complete dataset, and
seed 1121803273 failed every time.)

Every byte a planned fault sends, its ending included, goes through fastscp's
own acceptor (the Cython framer under the PS3.8 state machine) playing an SCP
that accepts the association. No server, no socket.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability import (
    CUT_PHASES,
    EXPLICIT_LE,
    FAULT_ENDINGS,
    FAULT_PHASES,
    DatasetTemplate,
    FaultPlan,
    plan_fault,
)

from fastscp.protocol import pdu as P
from fastscp.protocol.association import (
    Aborted,
    Association,
    AssociationRequested,
    CommandReceived,
    DatasetFragment,
    Event,
)

T = TypeVar("T")
SMALL, LARGE = DatasetTemplate(2000), DatasetTemplate(150_000)
UID, SMALL_DATA = SMALL.instance(1)
LARGE_DATA = LARGE.instance(1)[1]


def receive(wire: bytes) -> tuple[list[Event], Association]:
    """The events fastscp's acceptor makes of ``wire``, accepting the association."""
    assoc = Association()
    assoc.connection_made()

    def accept(ev: Event) -> None:
        if isinstance(ev, AssociationRequested):
            result = P.PresentationContextResult(1, P.RESULT_ACCEPTANCE, EXPLICIT_LE)
            assoc.accept(P.AssociateAccept((result,), assoc.max_pdu, "1.2.826.0.1.3680043.10.1", "FASTSCP_TEST"))

    events = assoc.feed(wire, respond=accept)
    return events, assoc


def check(plan: FaultPlan, data: bytes) -> None:
    events, assoc = receive(plan.wire())
    fragments = [e for e in events if isinstance(e, DatasetFragment)]
    lasts = [e for e in fragments if e.last]
    context = f"{plan.phase}/{plan.how}"
    if plan.complete:
        assert len(lasts) == 1, context
        assert b"".join(bytes(f.data) for f in fragments) == data, context
    else:
        # the property the network test relies on: the last fragment never arrives whole
        assert not lasts, f"{context}: a fault the generator calls incomplete sent a whole dataset"
    if plan.phase in CUT_PHASES:
        # the PDU cut short stays unfinished, whatever the ending sends after it
        assert assoc.framer.buffered > 0, f"{context}: the cut PDU was completed"
        kinds = {type(e) for e in events}
        if plan.phase == "negotiation":
            assert not events, f"{context}: {events}"
        if plan.phase == "mid_command_pdu":
            assert CommandReceived not in kinds and Aborted not in kinds, f"{context}: {events}"
    elif plan.how == "abort" and plan.phase != "connect":
        # between PDUs, an A-ABORT is one: the receiver sees the peer abort
        assert isinstance(events[-1], Aborted) and events[-1].by_peer, f"{context}: {events[-1:]}"


class Edges:
    """A Chooser driven by hypothesis that often takes the ends of a range:
    the last PDU, the longest cut."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, seq: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(seq))

    def randint(self, a: int, b: int) -> int:
        return self.data.draw(st.sampled_from((a, b)) | st.integers(a, b))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([SMALL_DATA, LARGE_DATA]))
def test_no_injected_fault_sends_a_whole_dataset_at_the_edges(data: st.DataObject, dataset: bytes) -> None:
    check(plan_fault(Edges(data), "FASTSCP", UID, dataset), dataset)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from([SMALL_DATA, LARGE_DATA]))
def test_no_injected_fault_sends_a_whole_dataset(rng: random.Random, dataset: bytes) -> None:
    """random.Random, as the network test drives the generator."""
    check(plan_fault(rng, "FASTSCP", UID, dataset), dataset)


class Longest:
    """Always the largest choice: the last PDU, cut as short of whole as allowed."""

    def choice(self, seq: Sequence[T]) -> T:
        return seq[-1]

    def randint(self, a: int, b: int) -> int:
        return b


@pytest.mark.parametrize("phase", FAULT_PHASES)
@pytest.mark.parametrize("how", FAULT_ENDINGS)
@pytest.mark.parametrize("dataset", [SMALL_DATA, LARGE_DATA], ids=["small", "large"])
def test_longest_cut_of_every_fault(phase: str, how: str, dataset: bytes) -> None:
    """The case that made seed 1121803273 fail, for every phase and ending."""
    check(plan_fault(Longest(), "FASTSCP", UID, dataset, phase=phase, how=how), dataset)


class Tiny(Longest):
    def choice(self, seq: Sequence[T]) -> T:
        return seq[0]  # 1-byte fragments


@pytest.mark.parametrize("how", FAULT_ENDINGS)
def test_one_byte_fragments(how: str) -> None:
    """A 1-byte fragment is a 13-byte PDU: cut inside it before a reset or a
    close, but too short to be cut short of an A-ABORT with its header whole,
    so the abort goes between two PDUs instead."""
    dataset = SMALL_DATA[:40]
    plan = plan_fault(Tiny(), "FASTSCP", UID, dataset, phase="mid_dataset_pdu", how=how)
    assert plan.phase == ("between_dataset_pdus" if how == "abort" else "mid_dataset_pdu")
    check(plan, dataset)
