"""fastscp/frozen.py: the quicker __init__ makes the object the dataclass's own would."""

from __future__ import annotations

import dataclasses

import pytest

from fastscp.events import StoreAnswered
from fastscp.frozen import quick_init
from fastscp.protocol.commands import CStoreRequest


def _pair() -> tuple[type, type]:
    def make() -> type:
        @dataclasses.dataclass(frozen=True, slots=True)
        class Request:
            message_id: int
            uid: str
            priority: int = 0
            originator: str | None = None
        return Request
    plain = make()
    return plain, quick_init(make())


@pytest.mark.parametrize("args, kwargs", [
    ((1, "1.2"), {}), ((1, "1.2", 2), {}), ((1,), {"uid": "3", "originator": "A"}),
    ((), {"message_id": 5, "uid": "", "priority": 7, "originator": None})])
def test_the_object_is_the_dataclass_s_own(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    plain, quick = _pair()
    a, b = plain(*args, **kwargs), quick(*args, **kwargs)
    assert dataclasses.astuple(a) == dataclasses.astuple(b)
    assert repr(a).split("(", 1)[1] == repr(b).split("(", 1)[1]
    assert hash(dataclasses.astuple(a)) == hash(b) == hash(quick(*args, **kwargs))
    assert b == quick(*args, **kwargs) and b != a  # eq compares the class too, as the dataclass's does
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.priority = 9


def test_arguments_are_checked_as_the_dataclass_s_are() -> None:
    _, quick = _pair()
    with pytest.raises(TypeError):
        quick(1)
    with pytest.raises(TypeError):
        quick(1, "2", 3, None, 5)
    with pytest.raises(TypeError):
        quick(1, "2", colour="red")


def test_the_hot_path_classes_keep_their_fields() -> None:
    request = CStoreRequest(7, "1.2", "1.2.3", 0, True)
    assert (request.move_originator_ae, request.move_originator_id, request.has_dataset) == ("", None, True)
    assert StoreAnswered(None, 0, 0.5) == StoreAnswered(None, 0, 0.5)  # type: ignore[arg-type]  # no assoc needed


def test_what_it_does_not_cover_is_refused() -> None:
    def post_init(self: object) -> None:
        pass

    refused = [
        dataclasses.make_dataclass("NoSlots", [("a", int)], frozen=True),
        dataclasses.make_dataclass("NotFrozen", [("a", int)], slots=True),
        dataclasses.make_dataclass("Factory", [("a", list, dataclasses.field(default_factory=list))],
                                   frozen=True, slots=True),
        dataclasses.make_dataclass("KeywordOnly", [("a", int, dataclasses.field(kw_only=True))],
                                   frozen=True, slots=True),
        dataclasses.make_dataclass("PostInit", [("a", int)], namespace={"__post_init__": post_init},
                                   frozen=True, slots=True),
    ]
    for cls in refused:
        with pytest.raises(TypeError):
            quick_init(cls)
