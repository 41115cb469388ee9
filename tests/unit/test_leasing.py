"""The pure leasing rules of durable consumers, without a database.

``choose`` and ``blocked`` decide every lease; the lease tokens decide which
acks may reach the database.  Exhaustive over the small state space.
"""

from __future__ import annotations

import itertools
from typing import Optional

import pytest

from eventbus.consumers import blocked, choose, new_token, parse_token
from eventbus.model import MAX_ID, Backlog

def backlog(mode: str = "ordered", next_new: int = 1, head: int = 0, in_flight: int = 0,
            first_pending: Optional[int] = None, first_ready: Optional[int] = None) -> Backlog:
    return Backlog(mode=mode, next_new=next_new, head=head, in_flight=in_flight,
                   first_pending=first_pending, first_ready=first_ready, next_change_s=None)


def test_choose_ordered_holds_back_while_an_event_is_in_flight_or_delayed():
    assert choose(backlog(next_new=1, head=3)) == 1
    assert choose(backlog(next_new=2, head=3, in_flight=1, first_pending=1)) is None
    # the lowest pending event is nacked with a delay: nothing after it may go
    assert choose(backlog(next_new=4, head=9, first_pending=2, first_ready=3)) is None
    assert choose(backlog(next_new=4, head=9, first_pending=2, first_ready=2)) == 2
    assert choose(backlog(next_new=4, head=3)) is None
    assert blocked(backlog(next_new=2, head=3, in_flight=1, first_pending=1))
    assert not blocked(backlog(next_new=4, head=3))


def test_choose_shared_takes_the_lowest_ready_event_beside_those_in_flight():
    assert choose(backlog("shared", next_new=4, head=9, in_flight=2, first_pending=1)) == 4
    assert choose(backlog("shared", next_new=4, head=9, in_flight=2, first_pending=1,
                          first_ready=3)) == 3
    assert choose(backlog("shared", next_new=10, head=9, in_flight=2, first_pending=1)) is None
    assert not blocked(backlog("shared", next_new=4, head=9, in_flight=3, first_pending=1))



def _states():
    """Every small backlog that can exist: pending/ready ids below next_new."""
    for mode, next_new, head, in_flight in itertools.product(("ordered", "shared"), range(1, 5), range(0, 5), range(0, 3)):
        pendings = [None, *range(1, next_new)]
        for first_pending in pendings:
            readies = [None] if first_pending is None else [None, *range(first_pending, next_new)]
            for first_ready in readies:
                if in_flight and first_pending is None:
                    continue  # an event in flight is pending
                yield backlog(mode, next_new, head, in_flight, first_pending, first_ready)


@pytest.mark.parametrize("b", list(_states()))
def test_choose_only_ever_picks_a_ready_event_or_the_next_new_one_that_exists(b):
    chosen = choose(b)
    if chosen is None:
        return
    assert chosen == b.first_ready or (chosen == b.next_new <= b.head)
    if b.mode == "ordered":
        assert b.in_flight == 0, "ordered mode leased beside an event in flight"
        if b.first_pending is not None:
            assert chosen == b.first_pending, "ordered mode skipped the lowest pending event"
    else:
        if b.first_ready is not None:
            assert chosen == b.first_ready, "shared mode passed over a ready event"


@pytest.mark.parametrize("b", list(_states()))
def test_blocked_means_a_new_event_could_not_be_leased(b):
    # Publishing one more event (head + 1) changes the choice only if not blocked.
    grown = b._replace(head=max(b.head, b.next_new))
    if blocked(b):
        assert choose(grown) != b.next_new
    elif b.first_ready is None and (b.mode == "shared" or b.first_pending is None):
        assert choose(grown) == b.next_new


def test_a_token_names_its_event_and_is_random():
    tokens = {new_token(7) for _ in range(100)}
    assert len(tokens) == 100
    assert all(parse_token(t) == 7 for t in tokens)


@pytest.mark.parametrize("token", [
    "", "7", ".abc", "7.", "x.abc", "-1.abc", "0.abc", f"{MAX_ID + 2}.abc",
    "7.a\x00b", "7.a b", "7." + "a" * 65, "07x.abc",
])
def test_a_token_not_shaped_like_ours_names_no_event(token):
    assert parse_token(token) is None
