"""schema.loads_meta reads what json.loads reads, the same objects and types, and fails as it fails."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from instructdiffusion_data.schema import _long_number, loads_meta


def same(a, b) -> bool:
    """Equal with types (1 != 1.0 here), NaN equal to NaN and the sign of zero kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


EDGE = [
    '{"a": 1, "a": 2}',  # duplicate key: the last wins
    '{"x": 123456789012345678901234567890}',  # beyond 64 bits: still an int
    '{"x": -9223372036854775809}', '{"x": 9223372036854775807}', '{"x": 18446744073709551615}',
    '{"x": 1234567890123456789.5}', '[0.1234567890123456789012]',
    '{"s": "\\ud800"}',  # a lone surrogate
    '{"f": 1e400}', '{"f": -1e400}', '{"f": NaN}', '{"f": Infinity}', '{"f": -Infinity}',
    '{"f": -0.0}', '{"i": -0}', '[1e5, 1E5, 1e-5, 2.5e-320, 5e-324, 1.7976931348623157e308]',
    '{"k": "\\u00e9\\n\\t\\"\\\\/"}', '{"k": "é ✓ 𝄞"}', ' {"a" : [ 1 , 2 ] } \n', '[]', '{}', '""', 'null', 'true',
    '{"counts": "PPYo0`0Q3L4M2O1N2N100O010O1"}', '{"counts": "l7T7l70000000000000000000000000000"}',
    '12345678901234567890', '-12345678901234567890', '[-12345678901234567890]', '{"a":\n12345678901234567890}',
    '{"s": "1234567890123456789012 and 12345678901234567890"}', '[12345678901234567890 ]', '[12345678901234567890.0]',
    '{"a": 12345678901234567890e0}', '{"a":12345678901234567890}', '{"a":\t-12345678901234567890\t}',
]


@pytest.mark.parametrize("text", EDGE)
def test_edge_cases_read_as_json_reads_them(text):
    assert same(loads_meta(text), json.loads(text))


@pytest.mark.parametrize("text", ['{"a": 1', '{"a": 1,}', "[1 2]", "{'a': 1}", "", '{"a": 1} x', '"\\x"', "[01]"])
def test_bad_text_fails_as_json_fails(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        loads_meta(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.randint(-10**rng.randint(0, 25), 10**rng.randint(0, 25))
    if kind == 1:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-320, 308)
    if kind == 2:
        return float(rng.randint(-10**6, 10**6)) / rng.choice([1, 3, 7, 1000])
    if kind == 3:
        return "".join(rng.choice("ab09 é✓\"\\\n\t/\u2028𝄞") for _ in range(rng.randint(0, 12)))
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return [round(rng.uniform(0, 640), rng.randint(0, 17)) for _ in range(rng.randint(0, 20))]  # polygons
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {f"k{rng.randint(0, 9)}": _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_long_number_texts_read_as_json_reads_them():
    """Numbers as other writers spell them: up to 30 digits, a fraction, an exponent."""
    rng = random.Random(8)
    for _ in range(5000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30))).lstrip("0") or "0"
        num = rng.choice(["", "-"]) + digits
        if rng.random() < 0.6:
            num += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        if rng.random() < 0.4:
            num += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 330))
        text = rng.choice(["{{\"x\": {}}}", "[{}]", "[1, {}]", "{}"]).format(num)
        assert same(loads_meta(text), json.loads(text)), text


def test_random_documents_read_as_json_reads_them():
    rng = random.Random(7)
    for i in range(3000):
        doc = {"meta": _value(rng)}
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, separators=rng.choice([(",", ":"), (", ", ": ")]))
        assert same(loads_meta(text), json.loads(text)), text


def test_the_long_number_guard_is_the_token_pattern():
    """The byte-class search finds exactly what this pattern finds: a 19+ digit number token."""
    pattern = re.compile(r"(?:^|[\[:,\s])-?[0-9]{19,}(?:[,\]}\s.eE]|$)")
    rng = random.Random(9)
    alphabet = ["0", "1", "9", "0" * 19, "7" * 25, "[", ":", ",", " ", "\t", "\n", "]", "}", ".", "e", "E", "-",
                "a", '"', "é", "\ud800", "{"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert _long_number(text) == (pattern.search(text) is not None), repr(text)
