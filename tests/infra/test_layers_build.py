"""The dependency layer build: the pip recipe, the cache, and failing clearly without PyPI."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from infra import layers_build
from infra.layers_build import DepsLayerUnavailable, ensure_deps_layer, is_cached


class FakePip:
    """Stands in for `pip install --target`: records calls and lays out what pip would."""

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        if self.returncode == 0:
            target = Path(command[command.index("--target") + 1])
            for package in ("pydantic", "jwt", "botocore", "boto3", "urllib3"):
                (target / package).mkdir(parents=True)
                (target / package / "__init__.py").write_text("")
            (target / "boto3-1.35.0.dist-info").mkdir()
            (target / "six.py").write_text("")
            return subprocess.CompletedProcess(command, 0, "", "")
        return subprocess.CompletedProcess(command, self.returncode, "", "ERROR: Could not find a version (no network)")


class Paths(NamedTuple):
    """In the argument order of `ensure_deps_layer` and `is_cached`."""

    requirements: Path
    layer_dir: Path
    stamp: Path


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic>=2\n")
    return Paths(requirements, tmp_path / "deps-layer", tmp_path / "deps.stamp")


def test_pip_is_asked_for_lambda_arm64_cp313_wheels_only(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(layers_build.subprocess, "run", pip)
    ensure_deps_layer(*paths)
    (command,) = pip.calls
    joined = " ".join(command)
    assert "--platform manylinux2014_aarch64" in joined
    assert "--implementation cp" in joined
    assert "--python-version 3.13" in joined
    assert "--only-binary=:all:" in command
    assert command[command.index("-r") + 1] == str(paths.requirements)
    assert command[command.index("--target") + 1].endswith("python")


def test_build_leaves_out_what_the_runtime_provides(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers_build.subprocess, "run", FakePip())
    layer = ensure_deps_layer(*paths)
    site = layer.path / "python"
    assert sorted(p.name for p in site.iterdir()) == ["jwt", "pydantic"]


def test_an_unchanged_build_is_not_repeated(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(layers_build.subprocess, "run", pip)
    first = ensure_deps_layer(*paths)
    second = ensure_deps_layer(*paths)
    assert len(pip.calls) == 1
    assert first == second
    assert is_cached(*paths)


def test_changed_requirements_rebuild(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(layers_build.subprocess, "run", pip)
    first = ensure_deps_layer(*paths)
    paths.requirements.write_text("pydantic>=2\npyjwt>=2\n")
    second = ensure_deps_layer(*paths)
    assert len(pip.calls) == 2
    assert first.content_hash != second.content_hash


def test_no_pypi_and_no_cache_fails_with_a_clear_message(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers_build.subprocess, "run", FakePip(returncode=1))
    with pytest.raises(DepsLayerUnavailable, match=r"python -m infra\.layers_build"):
        ensure_deps_layer(*paths)
    assert not paths.stamp.exists()
    assert not paths.layer_dir.exists()
    assert not paths.layer_dir.with_name("deps-layer.staging").exists()


def test_a_cached_layer_needs_no_pip(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers_build.subprocess, "run", FakePip())
    ensure_deps_layer(*paths)
    monkeypatch.setattr(layers_build.subprocess, "run", FakePip(returncode=1))
    assert ensure_deps_layer(*paths).path == paths.layer_dir
