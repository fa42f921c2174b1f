"""The docs stand alone: every document or figure the code and docs point to is in the repository
(a bare document name is looked up at the top and in docs/), and each "§N" pointer into
docs/METHOD.md names a section that exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("supsup_hopfield", "compression", "cli", "bench", "tests", "docs") for p in (ROOT / d).rglob("*")
           if p.suffix in (".py", ".md")] + [ROOT / "README.md", ROOT / "setup.py"]


def test_every_referenced_doc_exists_and_sections_are_real():
    sections = {int(m) for m in re.findall(r"^## (\d+)\.", (ROOT / "docs/METHOD.md").read_text(), re.M)}
    assert sections >= set(range(1, 9))
    seen = 0
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for ref in re.findall(r"docs/[\w.-]+\.(?:md|png)", text):
            assert (ROOT / ref).is_file(), f"{path.relative_to(ROOT)} cites missing {ref}"
            seen += 1
        for first, last in re.findall(r"docs/METHOD\.md §(\d+)(?:[–-](\d+))?", text):
            for n in range(int(first), int(last or first) + 1):
                assert n in sections, f"{path.relative_to(ROOT)} cites METHOD.md §{n}"
        for ref in re.findall(r"[\w./-]+\.md\b", text):
            found = [c for c in (ROOT / ref, ROOT / "docs" / ref) if c.is_file() and ROOT in c.resolve().parents]
            assert found, f"{path.relative_to(ROOT)} cites {ref}, which is not in the repository"
    assert seen > 20
