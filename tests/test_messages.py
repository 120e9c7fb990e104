"""Every `python -m PKG COMMAND` that a message or a doc tells users to run exists (issue 11, defect 10).

An error once told users to run `python -m data validate`, which never existed (the command is `check`).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "model", "train", "cluster")
_CMD = re.compile(r"python -m (data|model|train|cluster)((?: [a-z][a-z_-]*)?)")


def _commands(pkg: str) -> set[str]:
    cli = importlib.import_module(f"{pkg}.__main__").cli
    assert isinstance(cli, click.Group)
    # list_commands, not .commands: `cluster`'s group loads annotate and accept when asked for (its _LazyGroup),
    # so .commands lacked them unless an earlier test had imported them
    return set(cli.list_commands(click.Context(cli)))


def test_every_command_named_in_messages_and_docs_exists():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += list((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    commands = {pkg: _commands(pkg) for pkg in PACKAGES}
    wrong = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pkg, sub in _CMD.findall(line):
                sub = sub.strip()
                if sub and sub not in commands[pkg]:
                    wrong.append(f"{path.relative_to(ROOT)}:{n}: python -m {pkg} {sub}")
    assert not wrong, "commands that do not exist:\n" + "\n".join(wrong)
