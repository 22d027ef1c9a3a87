"""Build the third-party dependency layer without Docker.

pip is asked for wheels of the Lambda platform (Linux aarch64, CPython 3.13)
instead of the build machine's, so the layer is right whatever machine builds
it and nothing is compiled. The result is cached in `.build/`, keyed by a hash
of requirements.txt *and* of the recipe below: an unchanged build is never
repeated, and a synth on a machine without network works once the cache exists.

    python -m infra.layers_build            # build (or confirm the cache)
    python -m infra.layers_build --force    # rebuild even when the cache is current

`app.py` calls `ensure_deps_layer()` from here, so the CLI and the synth can
never disagree about what the layer holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements.txt"
BUILD_DIR = REPO_ROOT / ".build"
LAYER_DIR = BUILD_DIR / "deps-layer"
STAMP = BUILD_DIR / "deps-layer.stamp"

LAMBDA_PYTHON_VERSION = "3.13"
# manylinux2014 is the baseline every aarch64 wheel targets; manylinux_2_28 is
# added because some packages (cryptography among them) publish their newest
# aarch64 builds only for it, and the python3.13 runtime (Amazon Linux 2023,
# glibc 2.34) runs both.
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")

# The python3.13 runtime ships boto3 and its dependency closure. Copies in the
# layer would shadow the runtime's (layers come first on sys.path), so a
# transitive pin could pair a botocore with an incompatible urllib3 and every
# function would pay their size at cold start.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "python_dateutil", "six", "urllib3")


class DepsLayerUnavailable(RuntimeError):
    """The layer is not cached and could not be built (typically: no route to PyPI)."""


@dataclass(frozen=True)
class DepsLayer:
    path: Path  # the directory to zip as the layer: it holds `python/`
    content_hash: str  # stable across machines; doubles as the CDK asset hash


def _pip_command(target: Path, requirements: Path) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += [
        "--implementation",
        "cp",
        "--python-version",
        LAMBDA_PYTHON_VERSION,
        "--only-binary=:all:",
        # Byte code compiled here would carry the build interpreter's magic
        # number, which Lambda's 3.13 ignores; leaving it out keeps the asset
        # deterministic.
        "--no-compile",
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]
    return command


def recipe_hash(requirements: Path = REQUIREMENTS) -> str:
    """Hash of everything that decides the layer's content: requirements plus how they are installed."""
    recipe = {
        "requirements": requirements.read_text(encoding="utf-8"),
        "python": LAMBDA_PYTHON_VERSION,
        "platforms": PLATFORMS,
        "pruned": RUNTIME_PROVIDED,
        "layout": "python/",
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _is_runtime_provided(entry: Path) -> bool:
    name = entry.name
    for package in RUNTIME_PROVIDED:
        if name == package or name == f"{package}.py":
            return True
        # dist-info names use the normalised distribution name: boto3-1.35.0.dist-info
        if name.endswith(".dist-info") and name.split("-", 1)[0].lower().replace("-", "_") == package:
            return True
    return False


def _prune(site: Path) -> None:
    for entry in site.iterdir():
        if _is_runtime_provided(entry) or entry.name in ("bin", "__pycache__"):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def is_cached(requirements: Path = REQUIREMENTS, layer_dir: Path = LAYER_DIR, stamp: Path = STAMP) -> bool:
    return (
        stamp.is_file() and (layer_dir / "python").is_dir() and stamp.read_text().strip() == recipe_hash(requirements)
    )


def ensure_deps_layer(
    requirements: Path = REQUIREMENTS,
    layer_dir: Path = LAYER_DIR,
    stamp: Path = STAMP,
    *,
    force: bool = False,
) -> DepsLayer:
    """Return the built layer, building it first unless the cache matches requirements.txt."""
    digest = recipe_hash(requirements)
    if not force and is_cached(requirements, layer_dir, stamp):
        return DepsLayer(layer_dir, digest)

    # Build beside the cache and swap in only on success, so an interrupted or
    # failed build never leaves a half-filled directory that a later synth
    # would mistake for the layer.
    staging = layer_dir.with_name(layer_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    site = staging / "python"
    site.mkdir(parents=True)
    completed = subprocess.run(_pip_command(site, requirements), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        detail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise DepsLayerUnavailable(
            f"Cannot build the dependency layer from {requirements} and no cached build matches it "
            f"(expected stamp {stamp} = {digest[:12]}...). pip said:\n  "
            + "\n  ".join(detail)
            + "\nRun `python -m infra.layers_build` on a machine that can reach PyPI, "
            "or restore the .build/ cache."
        )
    _prune(site)

    if stamp.exists():
        stamp.unlink()
    shutil.rmtree(layer_dir, ignore_errors=True)
    staging.rename(layer_dir)
    stamp.write_text(digest + "\n")
    return DepsLayer(layer_dir, digest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.layers_build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache matches requirements.txt")
    args = parser.parse_args(argv)
    cached = not args.force and is_cached()
    try:
        layer = ensure_deps_layer(force=args.force)
    except DepsLayerUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in layer.path.rglob("*") if f.is_file())
    state = "cached" if cached else "built"
    print(f"deps layer {state}: {layer.path} ({size / 1e6:.1f} MB, {layer.content_hash[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
