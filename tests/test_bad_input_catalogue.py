"""docs/bad-input.md and the tests match one to one: every row names a test that exists."""

import re
import subprocess
import sys

from tests.conftest import REPO_DIR

CATALOGUE = REPO_DIR / "docs" / "bad-input.md"


def catalogue_tests() -> list[str]:
    return re.findall(r"^\| \d+ \|.*\| `(tests/[^`]+)` \|$", CATALOGUE.read_text(), re.M)


def test_every_row_names_a_collected_test_and_no_test_twice():
    rows = catalogue_tests()
    assert len(rows) >= 25
    assert len(rows) == len(set(rows)), "a test stands in two rows"
    files = sorted({row.split("::")[0] for row in rows})
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *files], cwd=REPO_DIR,
                               capture_output=True, text=True).stdout.splitlines()
    ids = {line.strip() for line in collected}
    functions = {line.split("[")[0] for line in ids}
    missing = [row for row in rows if row not in ids and row not in functions]
    assert not missing, missing


def test_every_test_of_the_bad_input_suite_is_in_the_catalogue():
    rows = set(catalogue_tests())
    defined = re.findall(r"^def (test_\w+)", (REPO_DIR / "tests" / "test_bad_input.py").read_text(), re.M)
    assert {f"tests/test_bad_input.py::{name}" for name in defined} <= rows
