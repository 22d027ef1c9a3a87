"""The assembly's third-party layer, made runnable on this machine.

The dependency layer `cdk synth` packages holds wheels for arm64 Lambda
(CPython 3.13, aarch64), which this machine cannot import. What stands in for
it is the same layer rebuilt for this machine:

1. the distributions the layer holds are read from its `*.dist-info`
   directories, and their pins come from the same `requirements.lock` the
   layer was built from: one source for the versions here and on AWS. They
   are installed once for this interpreter and platform with
   `pip install --require-hashes --no-deps` (the lock lists every file's hash,
   this machine's wheels included), cached under `.build/local-deps/` by a
   hash of those pins. A layer whose versions are not the lock's was built
   from another lock, and is refused rather than imitated;
2. the layer's stand-in is a directory of links to exactly the top-level
   entries the assembly's layer has (a package, a module, an extension module
   whatever its platform tag, a dist-info), so a module missing from the
   built layer is missing here too, and the function fails as it would on
   AWS, with `No module named ...`.

A layer without distributions (the project's own shared layer) is pure Python
and runs as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from infra.layers_build import LOCK, DepsLayerUnavailable, LockedRequirement, read_lock

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_DEPS_ROOT = REPO_ROOT / ".build" / "local-deps"
_DIST_INFO = re.compile(r"^(?P<name>[A-Za-z0-9_.]+?)-(?P<version>[^-]+)\.dist-info$")


class LocalLayerUnavailable(RuntimeError):
    """The layer's distributions could not be installed for this machine (typically: no route to PyPI)."""


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(layer_dir: Path) -> dict[str, str]:
    """Distribution name -> version, for every `*.dist-info` in the layer's `python/`."""
    site = layer_dir / "python"
    found: dict[str, str] = {}
    if not site.is_dir():
        return found
    for entry in site.iterdir():
        match = _DIST_INFO.match(entry.name)
        if entry.is_dir() and match:
            found[_normalized(match["name"])] = match["version"]
    return found


def entry_key(name: str) -> str:
    """What identifies a top-level entry across platforms: `_cffi_backend.cpython-313-aarch64-linux-gnu.so`
    and `_cffi_backend.cpython-311-x86_64-linux-gnu.so` are the same module."""
    match = _DIST_INFO.match(name)
    if match:
        return _normalized(match["name"]) + ".dist-info"
    if name.endswith((".py", ".so", ".pth", ".pyd")):
        return name.split(".", 1)[0]
    return name


def _pip_install(requirements: list[str], target: Path, *, no_deps: bool, locked: bool = False) -> None:
    """`requirements` as pip takes them; `locked`: they are lock lines (`name==version --hash=...`), checked."""
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"]
    command += [*(["--no-deps"] if no_deps else []), "--no-compile", "--target", str(target)]
    target.mkdir(parents=True, exist_ok=True)
    listing = target.parent / "requirements.lock"
    if locked:
        listing.write_text("".join(line + "\n" for line in requirements), encoding="utf-8")
        command += ["--require-hashes", "-r", str(listing)]
    else:
        command += requirements
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        names = ", ".join(line.split(" ", 1)[0] for line in requirements)
        raise LocalLayerUnavailable(f"could not install {names} for this machine: {result.stderr.strip()[-800:]}")


def _install_once(directory: Path, fill: Callable[[Path], None]) -> Path:
    """`directory`, filled once by `fill(staging)`: a lock keeps parallel starts apart, and a stamp written before
    the staging directory takes its place tells a finished install from one that died halfway."""
    if (directory / ".complete").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / ".complete").is_file():
            return directory
        staging = directory.with_name(directory.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        fill(staging)
        (staging / ".complete").write_text("\n", encoding="utf-8")
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    return directory


def locked_pins(pinned: dict[str, str], lock: Path = LOCK) -> list[LockedRequirement]:
    """The lock's entries for the layer's distributions; a layer that disagrees with the lock is refused."""
    try:
        locked = read_lock(lock)
    except DepsLayerUnavailable as error:
        raise LocalLayerUnavailable(str(error)) from None
    disagreeing = [
        f"{name}=={version} (the lock has {locked[name].version if name in locked else 'no such distribution'})"
        for name, version in sorted(pinned.items())
        if name not in locked or locked[name].version != version
    ]
    if disagreeing:
        raise LocalLayerUnavailable(
            f"the layer holds distributions that {lock} does not pin: {', '.join(disagreeing)}; it was built from "
            "another lock: rebuild it (`python -m infra.layers_build`) and synthesize again"
        )
    return [locked[name] for name in sorted(pinned)]


def _full_install(requirements: list[LockedRequirement], root: Path) -> Path:
    """The locked distributions installed for this interpreter, once per list."""
    lines = [requirement.line() for requirement in requirements]
    recipe = json.dumps({"pins": lines, "python": sys.version_info[:2], "platform": sys.platform}, sort_keys=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    installed = _install_once(
        root / key, lambda staging: _pip_install(lines, staging / "python", no_deps=True, locked=True)
    )
    return installed / "python"


def local_layer(layer_dir: Path, root: Path = LOCAL_DEPS_ROOT, lock: Path = LOCK) -> Path:
    """A directory that stands in for `layer_dir` on this machine (it holds `python/`, as a layer does)."""
    pinned = pins(layer_dir)
    if not pinned:
        return layer_dir
    installed = _full_install(locked_pins(pinned, lock), root)
    wanted = {entry_key(entry.name) for entry in (layer_dir / "python").iterdir() if entry.name != "__pycache__"}
    digest = hashlib.sha256(json.dumps(sorted(wanted)).encode() + str(installed).encode()).hexdigest()[:16]
    overlay = root / "layers" / digest
    site = overlay / "python"
    if (overlay / ".complete").is_file():
        return overlay
    staging = root / "layers" / f"{digest}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "python").mkdir(parents=True)
    for entry in installed.iterdir():
        if entry_key(entry.name) in wanted:
            (staging / "python" / entry.name).symlink_to(entry)
    (staging / ".complete").write_text("\n", encoding="utf-8")
    try:
        staging.rename(overlay)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another start made the same overlay meanwhile
    assert site.is_dir()
    return overlay


def runtime_provided(root: Path = LOCAL_DEPS_ROOT) -> Path:
    """What the Lambda Python runtime ships beside the standard library (boto3 and its closure).

    The boto3 this project is developed against stands in for the runtime's.
    """
    from importlib import metadata

    version = metadata.version("boto3")
    return _install_once(
        root / f"runtime-boto3-{version}", lambda staging: _pip_install([f"boto3=={version}"], staging, no_deps=False)
    )
