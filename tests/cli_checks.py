"""Assertions shared by the tests that run the ``lowrank`` command in a subprocess."""

from __future__ import annotations

import subprocess


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert ``p`` failed the CLI way (exit 2, one ``lowrank: error:`` line holding every
    needle, no traceback); return the line."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowrank: error:"), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
