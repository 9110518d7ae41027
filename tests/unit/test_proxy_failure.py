"""One failure vocabulary (proxy/failure.py): the names the code uses are the ones users read."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from proxy import failure
from proxy.config import Config
from proxy.retry import RETRY_ON_WORDS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "proxy.md"
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_failure_name_is_a_constant_of_the_vocabulary() -> None:
    names = set(typing.get_args(failure.Failure))
    constants = {failure.CONNECT, failure.RESET, failure.TIMEOUT, failure.PROTOCOL, failure.READ_TIMEOUT}
    assert names == constants
    assert set(failure.ATTEMPT_FAILURES) | {failure.READ_TIMEOUT} == names
    assert set(failure.ATTEMPT_FAILURES) > failure.GATEWAY_FAILURES
    assert set(failure.RETRY_ON_WORD) <= names


def test_the_metric_labels_documented_are_the_attempt_failures() -> None:
    """docs/proxy.md's upstream_failures_total row lists exactly the names an attempt reports."""
    row = next(
        line for line in DOCS.read_text().splitlines() if line.startswith("| `upstream_failures_total`")
    )
    documented = re.findall(r"`([a-z-]+)`", row.rsplit("by reason:", 1)[-1])
    assert sorted(documented) == sorted(failure.ATTEMPT_FAILURES)


def test_the_retry_on_words_are_documented_and_the_default_uses_them() -> None:
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `--retry-on`"))
    for word in RETRY_ON_WORDS:
        assert f"`{word}`" in row
    assert {w for w in Config().retry_on if not w.isdigit()} == set(RETRY_ON_WORDS)
