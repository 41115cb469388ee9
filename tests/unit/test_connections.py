"""The connection budget: who is closed to make room, and who never is."""
from __future__ import annotations

import resource

import pytest

from eventbus.http.connections import FD_RESERVE, ConnectionBudget, connection_limit


class FakeConnection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


def opened(budget: ConnectionBudget, *names: str) -> list[FakeConnection]:
    conns = [FakeConnection(n) for n in names]
    for c in conns:
        assert budget.admit(c)
    return conns


def test_under_the_limit_nobody_is_closed():
    budget = ConnectionBudget(3)
    conns = opened(budget, "a", "b", "c")
    assert len(budget) == 3 and not any(c.evicted for c in conns)


def test_at_the_limit_the_connection_waiting_longest_makes_room():
    budget = ConnectionBudget(3)
    a, b, c = opened(budget, "a", "b", "c")
    budget.serving(a)
    budget.waiting(a)  # answered: it now waits behind b and c
    (d,) = opened(budget, "d")
    assert b.evicted and not (a.evicted or c.evicted or d.evicted)
    assert len(budget) == 3
    budget.closed(b)  # its connectionLost comes later: counted once only
    assert len(budget) == 3


def test_a_connection_serving_a_request_is_never_closed_to_make_room():
    budget = ConnectionBudget(2)
    held, trickler = opened(budget, "held", "trickler")
    budget.serving(held)  # a held peek, SSE stream or consumer next
    (newer,) = opened(budget, "newer")
    assert trickler.evicted and not held.evicted
    budget.serving(newer)
    refused = FakeConnection("refused")
    assert not budget.admit(refused)  # everyone is serving: the new one gets a 503
    assert budget.refused == 1 and not held.evicted and not newer.evicted
    budget.closed(held)
    assert budget.admit(FakeConnection("after"))


def test_no_limit_admits_everyone():
    budget = ConnectionBudget(None)
    conns = opened(budget, *map(str, range(1000)))
    assert not any(c.evicted for c in conns)


@pytest.mark.parametrize("soft, expected", [
    (1024, 1024 - FD_RESERVE), (65536, 65536 - FD_RESERVE), (192, 192 - 48), (8, 6),
    (resource.RLIM_INFINITY, None),
])
def test_the_limit_leaves_a_reserve_of_descriptors(soft, expected):
    assert connection_limit(soft) == expected
