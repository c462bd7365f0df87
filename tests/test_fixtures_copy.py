from pathlib import Path

import pytest

from tests.conftest import FIXTURES

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


@pytest.mark.skipif(not SHARED.exists(), reason="no ../shared/fixtures beside this checkout")
def test_fixture_copies_match_the_shared_ones():
    for shared in SHARED.glob("metrics-*"):
        assert (FIXTURES / shared.name).read_bytes() == shared.read_bytes(), shared.name
