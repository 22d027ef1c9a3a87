"""Build the third-party dependency layer without Docker, reproducibly.

What goes in is `requirements.lock`: every distribution pinned to one version
with the sha256 of each of its files, resolved for the Lambda platform (Linux
aarch64, CPython 3.13) from the ranges in requirements.txt. pip is asked for
wheels of that platform instead of the build machine's, and checks every
download against the lock (`--require-hashes`), so any machine builds the same
layer and nothing is compiled from source.

The built tree then gets byte code for the runtime's Python (see
`compile_bytecode`), and its identity is a sha256 over the built files
(`tree_hash`): that is the CDK asset hash, so a layer version changes exactly
when its content does. The project's own code (handlers/, the shared layer)
is deployed the same way, from compiled copies (`ensure_compiled_copy`).

    python -m infra.layers_build            # build (or confirm the cache); prints size and hash
    python -m infra.layers_build --force    # rebuild even when the cache is current
    python -m infra.layers_build --lock     # re-resolve requirements.txt into requirements.lock

The build is cached in `.build/`, keyed by a hash of the lock *and* of the
recipe below: an unchanged build is never repeated, and a synth on a machine
without network works once the cache exists. `app.py` calls
`ensure_deps_layer()` from here, so the CLI and the synth never disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra.package_size import unzipped_size

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements.txt"
LOCK = REPO_ROOT / "requirements.lock"
BUILD_DIR = REPO_ROOT / ".build"
LAYER_DIR = BUILD_DIR / "deps-layer"
STAMP = BUILD_DIR / "deps-layer.stamp"

LAMBDA_PYTHON_VERSION = "3.13"
# manylinux2014 is the baseline every aarch64 wheel targets; manylinux_2_28 is
# added because some packages (cryptography among them) publish their newest
# aarch64 builds only for it, and the python3.13 runtime (Amazon Linux 2023,
# glibc 2.34) runs both. The lock is resolved for the newer of the two.
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")
LOCK_PLATFORM = "aarch64-manylinux_2_28"
# Where Lambda mounts a layer's `python/`: the paths compiled into the byte code.
LAYER_SITE_ON_LAMBDA = "/opt/python"

# The python3.13 runtime ships boto3 and its dependency closure. Copies in the
# layer would shadow the runtime's (layers come first on sys.path), so a
# transitive pin could pair a botocore with an incompatible urllib3 and every
# function would pay their size at cold start. They stay in the lock (it is the
# complete resolution) and are left out of the install.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})

BYTECODE_SCRIPT = REPO_ROOT / "infra" / "compile_bytecode.py"
PYODIDE_RUNNER = REPO_ROOT / "infra" / "bytecode.mjs"
NODE_MODULES = REPO_ROOT / "node_modules"


class DepsLayerUnavailable(RuntimeError):
    """The layer is not cached and could not be built (no route to PyPI, no byte code compiler, a bad lock)."""


@dataclass(frozen=True)
class BuiltTree:
    """A built asset directory (a layer holds `python/`) and the sha256 of its content: the CDK asset hash."""

    path: Path
    content_hash: str


@dataclass(frozen=True)
class LockedRequirement:
    name: str  # normalised distribution name (PEP 503)
    version: str
    hashes: tuple[str, ...]  # "sha256:<hex>", one per file the index has for this version

    def line(self) -> str:
        return f"{self.name}=={self.version} " + " ".join(f"--hash={digest}" for digest in self.hashes)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def read_lock(path: Path = LOCK) -> dict[str, LockedRequirement]:
    """Normalised name -> pin, for every requirement of a hash-pinned lock; anything looser is refused."""
    if not path.is_file():
        raise DepsLayerUnavailable(f"{path} is missing: run `make lock` to resolve requirements.txt into it")
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    locked: dict[str, LockedRequirement] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LOCK_LINE.match(line)
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
        if match is None or not hashes or ";" in line:
            raise DepsLayerUnavailable(
                f"{path}:{number}: {raw.strip()!r} is not `name==version --hash=sha256:...` "
                "(regenerate the lock with `make lock`)"
            )
        name = normalized(match["name"])
        locked[name] = LockedRequirement(name, match["version"], hashes)
    if not locked:
        raise DepsLayerUnavailable(f"{path} pins nothing: run `make lock`")
    return locked


def layer_requirements(lock: Path = LOCK) -> list[LockedRequirement]:
    """What the layer installs: the lock less what the runtime provides, in name order."""
    return [pin for name, pin in sorted(read_lock(lock).items()) if name not in RUNTIME_PROVIDED]


def lock_command(requirements: Path = REQUIREMENTS, lock: Path = LOCK) -> list[str]:
    """uv resolves for another platform and Python without having them, and writes every file's hash."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv") or "uv"
    return [
        uv,
        "pip",
        "compile",
        str(requirements),
        "--generate-hashes",
        "--python-platform",
        LOCK_PLATFORM,
        "--python-version",
        LAMBDA_PYTHON_VERSION,
        "--only-binary",
        ":all:",
        "--custom-compile-command",
        "make lock",
        "--quiet",
        "--output-file",
        str(lock),
    ]


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
        # The lock is the complete resolution: pip installs exactly its lines,
        # and refuses a file whose sha256 the lock does not list.
        "--require-hashes",
        "--no-deps",
        # pip would compile with this machine's interpreter; `compile_bytecode`
        # compiles for the runtime's instead.
        "--no-compile",
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]
    return command


def _bytecode_command(tree: Path, prefix: str) -> list[str]:
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == LAMBDA_PYTHON_VERSION:
        return [sys.executable, str(BYTECODE_SCRIPT), str(tree), prefix, LAMBDA_PYTHON_VERSION]
    # A pyc is only valid for the minor version that wrote it, and this
    # machine's Python is another one: Pyodide's CPython of the runtime's
    # version (pinned in package.json) compiles instead.
    if shutil.which("node") is None or not (NODE_MODULES / "pyodide").is_dir():
        raise DepsLayerUnavailable(
            f"byte code for Python {LAMBDA_PYTHON_VERSION} needs that interpreter, and this machine runs "
            f"{sys.version_info[0]}.{sys.version_info[1]}: install Node.js 22 or 24 and run `npm ci` "
            f"(it installs the pinned Pyodide CPython {LAMBDA_PYTHON_VERSION} into node_modules/)"
        )
    return ["node", str(PYODIDE_RUNNER), str(tree), prefix, LAMBDA_PYTHON_VERSION]


def compile_bytecode(tree: Path, prefix: str = LAYER_SITE_ON_LAMBDA) -> int:
    """Compile every module under `tree` for the runtime's Python; returns how many. Fails on any that won't."""
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    completed = subprocess.run(
        _bytecode_command(tree, prefix), capture_output=True, text=True, check=False, env=environment
    )
    try:
        report = json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        report = {"error": (completed.stderr or completed.stdout).strip()[-800:] or "no output"}
    if completed.returncode != 0 or "error" in report:
        raise DepsLayerUnavailable(f"compiling byte code for Python {LAMBDA_PYTHON_VERSION} failed: {report}")
    if report["failures"]:
        raise DepsLayerUnavailable(
            f"{len(report['failures'])} module(s) do not compile under Python {report['version']}, so they could "
            "not be imported on Lambda either:\n  " + "\n  ".join(report["failures"])
        )
    return int(report["compiled"])


# Caches and tool state a source tree may hold; none of it is source, and none of it is deployed.
SOURCE_CACHES = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def tree_hash(root: Path, *, source_only: bool = False) -> str:
    """sha256 over what a zip of `root` holds: each file's relative path, executable bit and content
    (`source_only`: leaving out the caches a source tree gathers as it is used)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        if source_only and (set(path.relative_to(root).parts) & set(SOURCE_CACHES) or path.suffix in (".pyc", ".pyo")):
            continue
        if path.is_symlink():
            digest.update(f"L {relative} -> {os.readlink(path)}\n".encode())
        elif path.is_file():
            executable = bool(path.stat().st_mode & stat.S_IXUSR)
            digest.update(f"F {relative} {int(executable)} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def bytecode_recipe() -> str:
    """What decides the byte code besides the source: the compile script and the compiler that runs it."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == LAMBDA_PYTHON_VERSION:
        compiler = f"cpython {sys.version.split()[0]}"
    else:
        manifest = NODE_MODULES / "pyodide" / "package.json"
        pinned = json.loads(manifest.read_text())["version"] if manifest.is_file() else "absent"
        compiler = f"pyodide {pinned}"
    script = hashlib.sha256(BYTECODE_SCRIPT.read_bytes() + PYODIDE_RUNNER.read_bytes()).hexdigest()
    return f"{compiler} {script} unchecked-hash"


def recipe_hash(lock: Path = LOCK) -> str:
    """Hash of everything that decides the layer's content: the lock plus how it is installed and compiled."""
    recipe = {
        "lock": lock.read_text(encoding="utf-8") if lock.is_file() else None,
        "python": LAMBDA_PYTHON_VERSION,
        "platforms": PLATFORMS,
        "runtime_provided": sorted(RUNTIME_PROVIDED),
        "layout": "python/",
        "bytecode": [bytecode_recipe(), LAYER_SITE_ON_LAMBDA],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _prune(site: Path) -> None:
    # Console scripts are of no use in a layer (nothing runs them there).
    shutil.rmtree(site / "bin", ignore_errors=True)


def is_cached(lock: Path = LOCK, layer_dir: Path = LAYER_DIR, stamp: Path = STAMP) -> bool:
    return stamp.is_file() and (layer_dir / "python").is_dir() and stamp.read_text().strip() == recipe_hash(lock)


def ensure_deps_layer(
    lock: Path = LOCK,
    layer_dir: Path = LAYER_DIR,
    stamp: Path = STAMP,
    *,
    force: bool = False,
) -> BuiltTree:
    """Return the built layer, building it first unless the cache matches the lock and the recipe."""
    digest = recipe_hash(lock)
    if not force and is_cached(lock, layer_dir, stamp):
        return BuiltTree(layer_dir, tree_hash(layer_dir))
    pins = layer_requirements(lock)

    # Build beside the cache and swap in only on success, so an interrupted or
    # failed build never leaves a half-filled directory that a later synth
    # would mistake for the layer.
    staging = layer_dir.with_name(layer_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    site = staging / "python"
    site.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="deps-layer-") as scratch:
            requirements = Path(scratch) / "layer-requirements.txt"
            requirements.write_text("".join(pin.line() + "\n" for pin in pins), encoding="utf-8")
            completed = subprocess.run(_pip_command(site, requirements), capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
            raise DepsLayerUnavailable(
                f"Cannot build the dependency layer from {lock} and no cached build matches it "
                f"(expected stamp {stamp} = {digest[:12]}...). pip said:\n  "
                + "\n  ".join(detail)
                + "\nRun `python -m infra.layers_build` on a machine that can reach PyPI, "
                "or restore the .build/ cache."
            )
        _prune(site)
        compile_bytecode(site)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if stamp.exists():
        stamp.unlink()
    shutil.rmtree(layer_dir, ignore_errors=True)
    staging.rename(layer_dir)
    stamp.write_text(digest + "\n")
    return BuiltTree(layer_dir, tree_hash(layer_dir))


def ensure_compiled_copy(source: Path, destination: Path, prefix: str) -> BuiltTree:
    """`source` (the project's own code: handlers, the shared layer) copied to `destination` with byte code for
    the runtime's Python, the paths in it rooted at `prefix`, where Lambda puts it (/var/task, /opt).

    Rebuilt only when the source or the compile recipe changed; the returned hash is of the built tree.
    """
    stamp = destination.with_name(destination.name + ".stamp")
    recipe = hashlib.sha256(
        json.dumps([tree_hash(source, source_only=True), bytecode_recipe(), prefix]).encode()
    ).hexdigest()
    if destination.is_dir() and stamp.is_file() and stamp.read_text().strip() == recipe:
        return BuiltTree(destination, tree_hash(destination))
    staging = destination.with_name(f"{destination.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*SOURCE_CACHES, "*.pyc", "*.pyo"))
        compile_bytecode(staging, prefix)
        if stamp.exists():
            stamp.unlink()
        shutil.rmtree(destination, ignore_errors=True)
        try:
            staging.rename(destination)
        except OSError:
            pass  # another synthesis of the same source (the local stack, a test session) put it there first
        else:
            stamp.write_text(recipe + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuiltTree(destination, tree_hash(destination))


def relock(requirements: Path = REQUIREMENTS, lock: Path = LOCK) -> None:
    completed = subprocess.run(lock_command(requirements, lock), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise DepsLayerUnavailable(f"resolving {requirements} failed:\n{completed.stderr.strip()[-1500:]}")
    read_lock(lock)  # what was written is a lock this build accepts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.layers_build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache matches the lock")
    parser.add_argument("--lock", action="store_true", help="re-resolve requirements.txt into requirements.lock")
    args = parser.parse_args(argv)
    try:
        if args.lock:
            relock()
            print(f"{LOCK.name}: {len(read_lock())} distributions pinned with hashes")
            return 0
        cached = not args.force and is_cached()
        layer = ensure_deps_layer(force=args.force)
    except DepsLayerUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    state = "cached" if cached else "built"
    size = unzipped_size(layer.path) / 1e6
    print(f"deps layer {state}: {layer.path} ({size:.1f} MB unzipped, content sha256 {layer.content_hash[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
