#!/usr/bin/env python3
"""Bootstrap for the two README commands; needs only Python 3.11+.

    python3 dev.py demo [ARGS]   the main job: `sessionstore demo` (embedded PostgreSQL if no DSN)
    python3 dev.py test [ARGS]   the whole test suite (pytest ARGS)
    python3 dev.py bench [ARGS]  every benchmark in one run (bench/run.py ARGS)
    python3 dev.py sql           every statement the library sends, to docs/sql/

The first run creates .venv/ and installs the package with its dev extras; later runs
reinstall only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SESSIONSTORE_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".sessionstore-installed"
PYTEST_NO_TESTS = 5


def ensure_venv(extras: str = "dev") -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - say so clearly on an older Python
        sys.exit(f"Python 3.11+ is needed, this is {sys.version.split()[0]}")
    wanted = extras + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{extras}]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "bench", "sql"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv("dev,bench" if command == "bench" else "dev")
    if command == "bench":
        return subprocess.run([str(BIN / "python"), "bench/run.py", *rest], cwd=ROOT).returncode
    if command == "sql":
        return subprocess.run([str(BIN / "python"), "-m", "tests.sql_catalog"], cwd=ROOT).returncode
    if command == "demo":
        return subprocess.run([str(BIN / "sessionstore"), "demo", *rest], cwd=ROOT).returncode
    code = subprocess.run([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT).returncode
    if code == PYTEST_NO_TESTS:
        print("pytest collected no tests: treating that as a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
