"""Every catalogue case against every server it applies to (the proxy in front of asgilab, and
asgilab alone), plus the catalogue's own rules: enough cases, every field filled, every SHOULD
that is not followed listed in docs/conformance.md with its reason."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.conformance.catalogue import CASES, CATEGORIES, Case
from tests.unit.conformance.servers import RAW, SEEN, Servers, exchange

DOCS = Path(__file__).resolve().parents[3] / "docs" / "conformance.md"
PARAMS = [(case, target) for case in CASES for target in case.targets]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize(("case", "target"), PARAMS, ids=[f"{c.id}-{t}" for c, t in PARAMS])
def test_case(case: Case, target: str, servers: Servers) -> None:
    mark = len(SEEN)
    port = servers.ports[target]
    if case.raw is not None:
        RAW[f"/raw/{case.id}"] = case.raw
        port = servers.ports["proxy-raw"]
    result = exchange(
        port,
        list(case.send),
        list(case.methods),
        case.responses,
        half_close=case.half_close,
        wait_close=0.3 if case.keep_open else 2.0,
    )
    seen = [t for t in SEEN[mark:] if t != "/health" and not t.startswith("/raw/")]
    case.expect(result, seen)


def test_the_catalogue_is_complete_and_well_formed() -> None:
    ids = [c.id for c in CASES]
    assert len(CASES) >= 100, len(CASES)
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    for c in CASES:
        assert c.category in CATEGORIES, c.id
        assert c.level in ("MUST", "SHOULD"), c.id
        assert re.fullmatch(r"RFC 91(10|12) §\d+(\.\d+)*", c.rfc), (c.id, c.rfc)
        assert c.rule and c.send and set(c.targets) <= {"proxy", "asgilab"}, c.id
        assert c.deviation is None or c.level == "SHOULD", f"{c.id}: a MUST is never waived"
    # Every category is represented.
    assert set(Counter(c.category for c in CASES)) == set(CATEGORIES)


def test_docs_list_every_should_not_followed_with_its_reason() -> None:
    text = DOCS.read_text()
    for c in CASES:
        if c.deviation is not None:
            assert f"`{c.id}`" in text, f"docs/conformance.md does not list {c.id}"
    # The summary counts in the docs are the catalogue's.
    total = re.search(r"(\d+) cases", text)
    assert total and int(total.group(1)) == len(CASES), "docs/conformance.md gives another case count"
