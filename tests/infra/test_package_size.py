"""Each function's unzipped code plus layers, measured and held to Lambda's 250 MB quota at synth time."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.application import create_app
from infra.package_size import LAMBDA_UNZIPPED_LIMIT_BYTES, PackageTooLarge, Part, check, measure, unzipped_size
from quanttrade_ws import topology
from tests.infra.conftest import Synth

MB = 1_000_000


def _sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk: Lambda's quota counts bytes, not blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def test_a_function_over_the_quota_fails_naming_it_and_its_parts(tmp_path: Path) -> None:
    # GIVEN small code and two layers that together exceed 262,144,000 bytes by one
    code = tmp_path / "code"
    _sparse(code / "handler.py", 1000)
    big = tmp_path / "big-layer"
    _sparse(big / "python" / "blob.bin", LAMBDA_UNZIPPED_LIMIT_BYTES - 2000)
    other = tmp_path / "other-layer"
    _sparse(other / "python" / "x.py", 1001)
    sizes = measure(
        {
            "fanout": [Part("code", code), Part("deps layer", big), Part("shared layer", other)],
            "connect": [Part("code", code), Part("shared layer", other)],
        }
    )
    # THEN the one over the quota is refused, with what it is made of
    with pytest.raises(PackageTooLarge, match=r"fanout: 262\.14 MB unzipped \(code 0\.00 \+ deps layer 262\.14"):
        check(sizes)
    assert [size.function for size in sizes if size.total > LAMBDA_UNZIPPED_LIMIT_BYTES] == ["fanout"]


def test_exactly_at_the_quota_passes(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    _sparse(layer / "python" / "blob.bin", LAMBDA_UNZIPPED_LIMIT_BYTES)
    check(measure({"f": [Part("deps layer", layer)]}))


def test_what_the_asset_excludes_is_not_counted(tmp_path: Path) -> None:
    # GIVEN a source tree with caches the asset leaves out
    _sparse(tmp_path / "pkg" / "mod.py", 10)
    _sparse(tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc", 5000)
    _sparse(tmp_path / ".mypy_cache" / "x.json", 7000)
    # THEN only the source counts with the asset's exclusions, everything without
    assert unzipped_size(tmp_path, ("**/__pycache__", "**/*.pyc", ".mypy_cache")) == 10
    assert unzipped_size(tmp_path) == 12010


def test_synth_reports_every_function_against_the_quota(synth: Synth) -> None:
    sizes = synth.stack.functions.package_sizes
    assert sorted(size.function for size in sizes) == sorted(f.name for f in topology.FUNCTIONS)
    for size in sizes:
        assert [label for label, _ in size.parts] == ["code", "shared layer", "deps layer"]
        assert all(part > 0 for _, part in size.parts[:2]), size
        assert 0 < size.total <= LAMBDA_UNZIPPED_LIMIT_BYTES
        assert "of the 250 MB quota" in size.line()
    if not synth.deps_layer_stand_in:
        # the real layer (pydantic-core, cryptography, powertools) is tens of MB
        assert sizes[0].parts[2][1] > 10 * MB


def test_synth_refuses_a_build_over_the_quota(tmp_path: Path) -> None:
    # GIVEN a dependency layer of 263 MB
    layer = tmp_path / "deps"
    _sparse(layer / "python" / "huge.so", 263 * MB)
    # WHEN the app is synthesized with it THEN it fails before anything is staged or deployed
    with pytest.raises(PackageTooLarge, match=r"authorizer: 263\.\d\d MB unzipped"):
        create_app(context={"deps_layer_dir": str(layer)}, outdir=str(tmp_path / "cdk.out"))
