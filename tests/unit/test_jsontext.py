"""The JSON text scanners against reference implementations, on random documents.

The references are the obvious recursive ones (the stdlib's decoder,
``object_pairs_hook``): fine for documents this small, and exactly what the
scanners replace where a client controls the depth.
"""
from __future__ import annotations

import json
import random
import sys
from typing import Any

import orjson
import pytest

from eventbus.errors import InvalidInput
from eventbus.http import jsontext, params

#: Strings chosen to confuse a scanner: brackets, quotes, colons, commas
#: and escapes inside strings, escaped names equal to plain ones.
TRICKY_STRINGS = ["", "a", "[", "]", "{", "}", "[{\"", ":", ",", "\\", "\\\"", "\"]}",
                  "x:y", "\u0061", "é", "\n", "\\u003a"]


def random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.choice(["scalar", "scalar", "list", "dict", "dict"] if depth > 0 else ["scalar"])
    if kind == "list":
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {rng.choice(TRICKY_STRINGS) + str(i): random_value(rng, depth - 1)
                for i in range(rng.randint(0, 3))}
    return rng.choice([0, -1, 1.5, 1e300, 10**20, True, None, *TRICKY_STRINGS])


def render(value: Any, rng: random.Random, dup: bool = False) -> str:
    """JSON text with random whitespace and escapes; ``dup`` repeats one name."""
    ws = lambda: rng.choice(["", " ", "\n", "\t ", "\r\n"])  # noqa: E731
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items()]
        if dup and items:
            k, _ = rng.choice(items)
            items.insert(rng.randint(0, len(items)), (k, 0))
            dup = False
        parts = [ws() + _string(k, rng) + ws() + ":" + ws() + render(v, rng, dup) + ws()
                 for k, v in items]
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + render(v, rng, dup) + ws() for v in value) + "]"
    if isinstance(value, str):
        return _string(value, rng)
    return json.dumps(value)


def _string(value: str, rng: random.Random) -> str:
    """A string literal, plain or with every character escaped as \\uXXXX."""
    if rng.random() < 0.2:
        return '"' + "".join(f"\\u{ord(c):04x}" for c in value) + '"'
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def reference_depth(text: str) -> int:
    """Nesting depth, every member counted (a dict would drop repeated names)."""
    def depth(value: Any) -> int:
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        return 0
    return depth(json.loads(text, object_pairs_hook=lambda pairs: [v for _, v in pairs]))


def has_duplicate(text: str) -> bool:
    found = []

    def hook(pairs: list) -> dict:
        names = [k for k, _ in pairs]
        if len(set(names)) != len(names):
            found.append(True)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return bool(found)


DOCUMENTS = list(range(400))


@pytest.mark.parametrize("seed", DOCUMENTS)
def test_scanners_agree_with_the_recursive_references(seed):
    rng = random.Random(seed)
    events = [random_value(rng, 5) for _ in range(rng.randint(1, 4))]
    events = [e if isinstance(e, dict) else {"v": e} for e in events]
    texts = [render(e, rng, dup=rng.random() < 0.3) for e in events]
    batch = "[" + ",".join(rng.choice(["", " ", "\n"]) + t for t in texts) + " ]"

    items, deepest = jsontext.split_array(batch)
    assert items == texts  # the exact text of each element
    assert deepest == max(map(reference_depth, texts))
    for text in texts:
        assert jsontext.depth(text.encode()) == reference_depth(text)
        assert (jsontext.duplicate_name(text) is not None) == has_duplicate(text)
        pairs = lambda p: p  # noqa: E731 (objects as their member lists)
        assert [(name, json.loads(raw, object_pairs_hook=pairs))
                for name, raw in jsontext.members(text)] == json.loads(text, object_pairs_hook=pairs)
        # The publish path's check (in C) says what the reference says.
        try:
            params.payload(text.encode())
            refused = False
        except InvalidInput as e:
            assert "twice" in e.message
            refused = True
        assert refused == has_duplicate(text), text


def test_members_give_values_exactly_as_written():
    text = '{"lease": 1e-300, "big" : 100000000000000000000 ,"s":"a\\"b", "n": {"x": [1, 2]}}'
    assert jsontext.members(text) == [
        ("lease", "1e-300"), ("big", "100000000000000000000"), ("s", '"a\\"b"'),
        ("n", '{"x": [1, 2]}')]


@pytest.mark.parametrize("levels, too_deep", [(jsontext.MAX_DEPTH, False), (jsontext.MAX_DEPTH + 1, True)])
def test_depth_is_counted_inside_each_event_for_single_and_batch_alike(levels, too_deep):
    event = '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"
    assert jsontext.depth(event.encode()) == levels
    for body in (event, "[" + event + "," + event + "]"):
        assert jsontext.too_deep(body.encode()) is too_deep
        if too_deep:
            with pytest.raises(InvalidInput, match="nested deeper than"):
                params.batch(params.payload(body.encode())[0]) if body[0] == "[" else params.payload(
                    body.encode())
        else:
            text, _ = params.payload(body.encode())
            if body[0] == "[":
                assert params.batch(text) == [event, event]


@pytest.mark.parametrize("body", [
    b'[{"a":' + b"[" * 954 + b"]" * 954 + b"}]",  # the RecursionError of issue 8
    b'[{"a":' + b"[" * 150 + b"]" * 150 + b"}]",  # parsed and rendered by orjson, then split
    b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"[" * 100000,  # invalid, and deep
    b'{"a":' + b"{\"b\":" * 3000 + b"1" + b"}" * 3000 + b"}",
])
def test_deep_bodies_are_refused_without_recursion(body):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # a recursive scanner anywhere would fail here
    try:
        with pytest.raises(InvalidInput, match="nested deeper than"):
            text, value = params.payload(body)
            params.batch(text)
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize("body, name", [
    (b'{"a": 1, "a": 2}', "a"),
    (b'{"a": 1, "\\u0061": 2}', "a"),  # the same name, escaped
    (b'{"x": "\\u003a", "b": 1, "b": 2}', "b"),  # an escaped colon defeats counting
    (b'[{"ok": 1}, {"n": {"c": 1, "c": 1}}]', "c"),
    (b'{"a": [{"k": 1, "k": 1}]}', "k"),
])
def test_a_repeated_member_name_is_refused_and_named(body, name):
    with pytest.raises(InvalidInput) as e:
        params.payload(body)
    assert f"{name!r}" in e.value.message


@pytest.mark.parametrize("body", [
    b'{"a": "x:y", "b": {"a": 1}}', b'{"a": "\\u003a", "b": 1}', b'[{"a": 1}, {"a": 1}]',
    b'{"a": 1, "A": 2}', b'{"": 1, " ": 2}',
])
def test_names_repeated_only_across_objects_or_inside_strings_are_fine(body):
    text, value = params.payload(body)
    assert value == orjson.loads(body)
