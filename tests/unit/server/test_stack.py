"""Pure functions: names, slugs, service messages, masking, steps, messages, settings. No Redis."""

from __future__ import annotations

import pytest

from workerpool.core.errors import BadInput
from workerpool.server.stack import parse_pool_counts

# --- stack and settings --------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "counts"), [
    ("A=2,B=1", {"A": 2, "B": 1}),
    ("A", {"A": 1}),
    ("Database Worker Pool=2, Kubernetes Worker Pool", {"Database Worker Pool": 2,
                                                        "Kubernetes Worker Pool": 1}),
    (" A = 3 ,", {"A": 3}),
    ("", {}),
])
def test_parse_pool_counts(spec: str, counts: dict[str, int]) -> None:
    assert parse_pool_counts(spec) == counts


@pytest.mark.parametrize("spec", ["A=0", "A=-1", "A=x", "A=", "A=1.5", "A=2,B=zero"])
def test_parse_pool_counts_refuses_bad_counts(spec: str) -> None:
    with pytest.raises(BadInput, match="NAME=COUNT"):
        parse_pool_counts(spec)


@pytest.mark.parametrize("spec", ["=2", " = 3", "A=\u00b2", "A=\u2463"],
                         ids=["no-name", "blank-name", "superscript-two", "circled-four"])
def test_parse_pool_counts_refuses_missing_names_and_odd_digits(spec: str) -> None:
    """A count without a pool name is not a pool named "2"; str.isdigit() digits are no counts."""
    with pytest.raises(BadInput, match="NAME=COUNT"):
        parse_pool_counts(spec)
