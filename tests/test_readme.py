"""README.md stays a user's page: short, with the sections a user looks for."""

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_readme_has_the_user_sections():
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    for wanted in ("Quickstart", "example", "library", "Command line", "HTTP", "Dask",
                   "Headline"):
        assert any(wanted in h for h in headings), (wanted, headings)
    assert "python3 -m pip install . && fastcofi demo" in README
    assert 'python3 -m pip install ".[test]" && python3 -m pytest' in README
    assert "What a rating file needs" in README and "--titles" in README
    assert "$ curl " in README and "distributed.fit(" in README
    # The headline table, and the link to where every figure's command and date are.
    assert re.search(r"^\| what \| figure \|$", README, flags=re.MULTILINE)
    assert "(bench/README.md)" in README
