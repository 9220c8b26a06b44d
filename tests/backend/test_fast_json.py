"""The ingest hot path's JSON fast paths agree with the stdlib they replace.

FastJsonRequest parses request bodies with pydantic-core and store.event_json writes stored event text with
it; json.loads and json.dumps stay the rule for everything the fast path cannot settle. Checked on random
documents and on the cases where the two parsers differ (NaN, lone surrogates, deep nesting).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import Any

import pytest

from backend import store
from backend.fast_json import FastJsonRequest

ALPHABET = "abcxyz \"\\/\t\n\u0000\u001f\u007f\u2028é猫🐱"


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def random_number(rng: random.Random) -> float | int:
    choice = rng.randrange(6)
    if choice == 0:
        return rng.randint(-2**70, 2**70)  # past 64 bits too
    if choice == 1:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-320, 308)  # subnormals to near the largest double
    if choice == 2:
        return float(rng.getrandbits(60))
    if choice == 3:
        return rng.choice([0.0, -0.0, 1e-5, 1e16, 5e-324, 1.7976931348623157e308, 0.1])
    return rng.random() if choice == 4 else rng.randint(-10, 10)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return random_number(rng)
    if kind == 1:
        return random_text(rng)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(["NaN", "Infinity", "-Infinity", "nan"])  # text that only looks like non-finite floats
    if kind in (4, 5):
        return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def parse_as_the_route_does(body: bytes) -> Any:
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    request = FastJsonRequest({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
    return asyncio.run(request.json())


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 and 1.0 differ; -0.0 and 0.0 differ; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_request_bodies_parse_to_exactly_what_json_loads_gives():
    rng = random.Random(0)
    for _ in range(2000):
        doc = random_value(rng)
        body = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        assert same(parse_as_the_route_does(body), json.loads(body)), body


@pytest.mark.parametrize("body", [
    b'{"events": [{"values": {"loss": NaN, "acc": -Infinity}}]}',  # the stdlib reads these; strict JSON does not
    b'{"a": "\\ud800 half a character"}',
    b'{"a": "\xed\xa0\x80"}',  # a surrogate as raw bytes
    b'{"a": 1, "a": 2}',
    b'[1e400, -1e400]',
    b"[" * 300 + b"]" * 300,  # deeper than pydantic-core's limit (~200), within the stdlib's
], ids=["nan", "surrogate escape", "surrogate bytes", "duplicate key", "overflow", "deep"])
def test_what_strict_json_refuses_falls_back_to_json_loads(body):
    assert same(parse_as_the_route_does(body), json.loads(body))


@pytest.mark.parametrize("body", [b'{"a": ', b"{'a': 1}", b'{"a": 1} trailing', b"\xff\xfe"],
                         ids=["cut", "quotes", "trailing", "not utf-8"])
def test_a_body_that_is_not_json_raises_the_error_fastapi_answers_with_422(body):
    with pytest.raises(ValueError) as raised:
        parse_as_the_route_does(body)
    assert isinstance(raised.value, (json.JSONDecodeError, UnicodeDecodeError))


def plain_event_json(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def test_stored_event_text_reads_back_as_the_plain_serialisation_does():
    rng = random.Random(1)
    for seq in range(2000):
        event = {"seq": seq, "time": rng.random() * 2e9, "kind": "metric", "step": seq,
                 "values": {random_text(rng): random_number(rng) for _ in range(rng.randint(0, 8))},
                 "extra": random_value(rng)}
        text = store.event_json(event)
        assert isinstance(text, str)
        assert same(json.loads(text), json.loads(plain_event_json(event))), event
        assert same(json.loads(text), event)
        text.encode("utf-8")  # stored as UTF-8 text


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_float_anywhere_is_refused_as_the_plain_serialisation_refuses_it(bad):
    for event in ({"seq": 0, "values": {"loss": bad}}, {"seq": 0, "extra": [{"deep": [bad]}]}):
        with pytest.raises(ValueError):
            plain_event_json(event)
        with pytest.raises(ValueError):
            store.event_json(event)


def test_what_the_fast_serialiser_cannot_settle_is_written_by_json_dumps():
    says_nan = {"seq": 0, "message": "loss is NaN, lr Infinity"}
    assert store.event_json(says_nan) == plain_event_json(says_nan)
    half = {"seq": 0, "message": "\ud800"}  # kept for the ingest check to name, which encodes the text to UTF-8
    assert store.event_json(half) == plain_event_json(half)
    deep: Any = None
    for _ in range(300):
        deep = [deep]
    nested = {"seq": 0, "extra": deep}
    assert store.event_json(nested) == plain_event_json(nested)
