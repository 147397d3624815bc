"""The README's two set-up commands exist, and (slow) `make demo` works as a user runs it."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT


def test_readme_holds_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the subprocess's own limit; pyproject's 600 s default would cut it first
def test_make_demo_runs_end_to_end() -> None:
    done = subprocess.run(
        ["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "oracle accuracy" in done.stdout
    assert (ROOT / "demo" / "bundled.png").read_bytes()[:4] == b"\x89PNG"
    assert "prefill (ours)" in done.stdout and "gap captured" in done.stdout
    assert "data:image/png;base64," in (ROOT / "demo" / "report.html").read_text()
    assert (ROOT / "demo" / "router" / "router.safetensors").is_file()
