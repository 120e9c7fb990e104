"""docs/reliability.md names, for each guarantee, the test that holds it: every such test must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    refs = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`", text)
    assert len(refs) > 30
    missing = []
    for path, name in refs:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and f"def {name[2:]}(" not in file.read_text(encoding="utf-8"):
            missing.append(path + name)
    # `file::a`, `::b`: b is in the same file as a
    for chain in re.finditer(r"`(tests/[\w/]+\.py)::\w+`((?:, `::\w+`)+)", text):
        source = (ROOT / chain.group(1)).read_text(encoding="utf-8")
        for name in re.findall(r"::(\w+)", chain.group(2)):
            if f"def {name}(" not in source:
                missing.append(f"{chain.group(1)}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
