"""Every official MLS vector family is tested: each file of the upstream copy
(``/work/shared/vectors/mls``, from mlswg/mls-implementations) must be copied to
``tests/vectors/mls`` and loaded by some test module here.

While a family is not implemented, list it in ``PENDING`` with the reason; it then shows up
as a strict xfail (never a silent skip), and the strictness flags the day it starts passing.
All families are implemented at present, so ``PENDING`` is empty.
"""

from __future__ import annotations

import json
import pathlib

import pytest

UPSTREAM = pathlib.Path("/work/shared/vectors/mls")
LOCAL = pathlib.Path(__file__).parents[1] / "vectors" / "mls"
TESTS = pathlib.Path(__file__).parent

PENDING: dict[str, str] = {}
"""family -> "not implemented yet: ..." reason."""


if PENDING:

    @pytest.mark.parametrize("family", sorted(PENDING))
    def test_pending_family(family: str, request: pytest.FixtureRequest) -> None:
        request.applymarker(pytest.mark.xfail(reason=PENDING[family], strict=True))
        raise NotImplementedError(PENDING[family])


def _loaded_families() -> set[str]:
    sources = "".join(
        p.read_text() for p in TESTS.glob("test_*.py") if p.name != pathlib.Path(__file__).name
    )
    return {p.stem for p in LOCAL.glob("*.json") if f'"{p.stem}"' in sources}


def test_every_local_family_is_loaded_by_a_test() -> None:
    local = {p.stem for p in LOCAL.glob("*.json")}
    assert local, "no vectors"
    assert local <= _loaded_families() | set(PENDING)
    for name in local:
        assert json.loads((LOCAL / f"{name}.json").read_text())


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="upstream vector copy not present")
def test_every_upstream_family_is_accounted_for() -> None:
    upstream = {p.stem for p in UPSTREAM.glob("*.json")}
    local = {p.stem for p in LOCAL.glob("*.json")}
    assert upstream <= local | set(PENDING), upstream - local - set(PENDING)
    assert not (local & set(PENDING)), "a family with vectors in tests/ is still listed pending"
