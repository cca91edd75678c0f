"""The order lifecycle table and the error tree."""

from __future__ import annotations

import pytest

from tradeengine.engine import (
    FINAL_STATUSES,
    TRANSITIONS,
    DomainError,
    EngineTimeout,
    EngineUnavailable,
    IllegalStatusTransition,
    InfrastructureError,
    InvalidTickSize,
    OrderStatus,
    StorageUnavailable,
    TradeEngineError,
    check_transition,
    errors,
    is_final,
)


def test_final_statuses_allow_no_transition() -> None:
    assert {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED} == set(
        FINAL_STATUSES
    )
    for status in FINAL_STATUSES:
        assert is_final(status)
        for target in OrderStatus:
            with pytest.raises(IllegalStatusTransition):
                check_transition(status, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (OrderStatus.NEW, OrderStatus.OPEN),
        (OrderStatus.NEW, OrderStatus.PENDING_TRIGGER),
        (OrderStatus.NEW, OrderStatus.REJECTED),
        (OrderStatus.PENDING_TRIGGER, OrderStatus.OPEN),
        (OrderStatus.PENDING_TRIGGER, OrderStatus.CANCELLED),
        (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED),
        (OrderStatus.PARTIALLY_FILLED, OrderStatus.PARTIALLY_FILLED),
        (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED),
        (OrderStatus.OPEN, OrderStatus.EXPIRED),
    ],
)
def test_legal_transitions_pass(current: OrderStatus, target: OrderStatus) -> None:
    assert check_transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (OrderStatus.NEW, OrderStatus.FILLED),
        (OrderStatus.PENDING_TRIGGER, OrderStatus.FILLED),
        (OrderStatus.OPEN, OrderStatus.OPEN),
        (OrderStatus.OPEN, OrderStatus.PENDING_TRIGGER),
        (OrderStatus.PARTIALLY_FILLED, OrderStatus.OPEN),
    ],
)
def test_illegal_transitions_raise_a_named_error(current: OrderStatus, target: OrderStatus) -> None:
    with pytest.raises(IllegalStatusTransition) as caught:
        check_transition(current, target)
    assert caught.value.code == "ILLEGAL_STATUS_TRANSITION"


def test_the_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)


def test_the_error_tree_has_one_root_and_two_branches() -> None:
    assert issubclass(DomainError, TradeEngineError)
    assert issubclass(InfrastructureError, TradeEngineError)
    for infra in (StorageUnavailable, EngineUnavailable, EngineTimeout):
        assert issubclass(infra, InfrastructureError) and not issubclass(infra, DomainError)
    assert InvalidTickSize("x", field="price").field == "price"
    assert EngineTimeout("late").code == "ENGINE_TIMEOUT"


def test_every_error_code_is_stable_upper_snake() -> None:
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, TradeEngineError):
            assert value.code.replace("_", "").isalpha() and value.code.isupper()
            assert value.__doc__ and value.__name__ in (errors.__doc__ or "")
