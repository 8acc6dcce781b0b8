"""The installs README "Installation" documents: the CPU-only requirements file stays in step with pyproject.toml.

`pip install labelaudit` pulls onnxruntime-gpu on Linux x86_64 and Windows (scores on a GPU, and on CPU too);
requirements-cpu.txt + `pip install --no-deps labelaudit` is the same install with onnxruntime instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_cpu_requirements_are_the_base_dependencies_with_onnxruntime(project):
    base = project["dependencies"]
    runtimes = {_name(r): r for r in base if _name(r).startswith("onnxruntime")}
    assert set(runtimes) == {"onnxruntime", "onnxruntime-gpu"}
    floor = {r.split(";")[0].strip().split(">=")[1] for r in runtimes.values()}
    cpu = [line.strip() for line in (ROOT / "requirements-cpu.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert cpu == [r for r in base if not _name(r).startswith("onnxruntime")] + [f"onnxruntime>={floor.pop()}"]


def test_the_readme_ci_examples_install_the_cpu_requirements():
    """The GitHub Actions and GitLab CI examples spell requirements-cpu.txt out (a user's repository lacks it)."""
    import re

    cpu = [line.strip() for line in (ROOT / "requirements-cpu.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    readme = (ROOT / "README.md").read_text()
    lists = [re.findall(r'"([^"]+)"', line) for line in readme.splitlines() if 'pip install "numpy' in line]
    assert len(lists) == 2 and all(found == cpu for found in lists), lists
    assert readme.count("pip install --no-deps labelaudit") >= 3  # both examples and the Installation table


def test_one_runtime_per_platform(project):
    """The markers of onnxruntime and onnxruntime-gpu must never both hold: they share the onnxruntime module."""
    Marker = pytest.importorskip("packaging.markers").Marker
    markers = {_name(r): r.split(";")[1] for r in project["dependencies"] if _name(r).startswith("onnxruntime")}

    for platform, machine in [("linux", "x86_64"), ("linux", "aarch64"), ("win32", "AMD64"), ("darwin", "arm64")]:
        env = {"sys_platform": platform, "platform_machine": machine}
        assert sum(Marker(m).evaluate(env) for m in markers.values()) == 1, (platform, machine)


def test_no_extra_adds_a_second_runtime_or_scikit_image(project):
    for extra, requirements in project["optional-dependencies"].items():
        names = {_name(r) for r in requirements}
        assert not names & {"onnxruntime", "onnxruntime-gpu", "scikit-image"}, extra
    assert "scikit-image" not in {_name(r) for r in project["dependencies"]}
