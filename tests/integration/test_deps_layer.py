"""The dependency layer's stand-in: the assembly layer's distributions, installed for this machine, entry for entry."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from infra.layers_build import ensure_deps_layer, layer_requirements
from local import deps_layer
from local.deps_layer import LocalLayerUnavailable, entry_key, local_layer, locked_pins, pins, runtime_provided


@pytest.fixture(scope="module")
def built_layer() -> Path:
    return ensure_deps_layer().path


def names(layer: Path) -> set[str]:
    # Byte code the interpreter caches beside a module is not part of what the layer ships.
    return {entry_key(entry.name) for entry in (layer / "python").iterdir() if entry.name != "__pycache__"}


def test_the_stand_in_holds_exactly_the_layers_entries(built_layer: Path) -> None:
    # GIVEN the arm64 layer the assembly ships: WHEN its stand-in is made for this machine
    stand_in = local_layer(built_layer)
    # THEN it has the same modules, packages and distributions, extension modules matched across platforms
    assert names(stand_in) == names(built_layer)
    assert {"jwt", "pydantic", "aws_lambda_powertools", "_cffi_backend"} <= names(stand_in)
    # AND boto3 is not in it but in the runtime's own directory, as on Lambda
    assert "boto3" not in names(stand_in)
    assert (runtime_provided() / "boto3").is_dir()


def test_a_module_missing_from_the_layer_is_missing_from_the_stand_in(built_layer: Path, tmp_path: Path) -> None:
    # GIVEN a layer build that lost PyJWT's package (its dist-info still there)
    broken = tmp_path / "layer"
    shutil.copytree(built_layer, broken, symlinks=True)
    shutil.rmtree(broken / "python" / "jwt")
    # WHEN its stand-in is made THEN jwt is absent too, and the rest is present
    stand_in = local_layer(broken)
    assert "jwt" not in names(stand_in)
    assert names(stand_in) == names(broken)


def test_the_same_pins_install_once(built_layer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the layer's distributions are installed: WHEN the stand-in is asked for again with pip unavailable
    local_layer(built_layer)

    def no_pip(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pip ran for a cached install")

    monkeypatch.setattr(deps_layer.subprocess, "run", no_pip)
    # THEN the cache answers
    assert names(local_layer(built_layer)) == names(built_layer)


def test_the_stand_in_installs_the_pins_of_the_lock_the_layer_was_built_from(built_layer: Path) -> None:
    # GIVEN the layer built from requirements.lock: WHEN its stand-in's pins are looked up
    locked = locked_pins(pins(built_layer))
    # THEN they are the lock's own entries (versions and hashes), one source for AWS and this machine
    assert locked == layer_requirements()
    stand_in = local_layer(built_layer) / "python"
    versions = {entry.name.removesuffix(".dist-info").split("-")[1] for entry in stand_in.glob("pydantic-*.dist-info")}
    assert versions == {pin.version for pin in locked if pin.name == "pydantic"}


def test_a_layer_built_from_another_lock_is_refused(built_layer: Path, tmp_path: Path) -> None:
    # GIVEN a layer whose PyJWT is not the version the lock pins
    broken = tmp_path / "layer"
    shutil.copytree(built_layer, broken, symlinks=True)
    (dist_info,) = (broken / "python").glob("pyjwt-*.dist-info")
    dist_info.rename(dist_info.with_name("pyjwt-0.0.1.dist-info"))
    # WHEN its stand-in is made THEN it is refused, naming the disagreement and the remedy
    with pytest.raises(LocalLayerUnavailable, match=r"pyjwt==0\.0\.1 \(the lock has .*infra\.layers_build"):
        local_layer(broken, root=tmp_path / "deps")


def test_a_failing_install_names_the_distributions(tmp_path: Path) -> None:
    # GIVEN a layer naming a distribution version that does not exist
    layer = tmp_path / "layer" / "python"
    (layer / "no_such_distribution_qt-0.0.0.dist-info").mkdir(parents=True)
    assert pins(tmp_path / "layer") == {"no-such-distribution-qt": "0.0.0"}
    # WHEN its stand-in is made THEN the error names what could not be installed
    with pytest.raises(LocalLayerUnavailable, match=r"no-such-distribution-qt==0\.0\.0"):
        local_layer(tmp_path / "layer", root=tmp_path / "deps")
    # AND nothing half-installed is left to be taken for a cache
    assert not list((tmp_path / "deps").glob("*/.complete"))


def test_a_layer_without_distributions_runs_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "shared" / "python" / "quanttrade_ws").mkdir(parents=True)
    assert local_layer(tmp_path / "shared") == tmp_path / "shared"
