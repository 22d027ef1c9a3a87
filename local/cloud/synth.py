"""Synthesize the CDK app into a cached cloud assembly under `.build/assembly/<key>/`.

The app runs exactly as `python app.py -c key=value ...` runs it, in a child
process, so jsii and its node process never live in the caller (the local
stack, a test session). The cache key covers every input of the synthesis:
the app's source (app.py, cdk.json, infra/, handlers/, layers/shared/), the
runtime requirements the dependency layer is built from, the context, and the
versions of the CDK libraries. An unchanged key reuses the assembly without
starting node at all.

One context key is always added: `aws:cdk:enable-asset-metadata`, which the
CDK CLI also sets for `cdk synth`. It only adds `aws:asset:path` metadata to
the resources that carry code (functions, layers), and that metadata is how
the local stack finds each function's code and layer directories.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from local.cloud.assembly import CloudAssembly

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".build" / "assembly"

# What `cdk synth` reads, relative to the project root (directories are walked).
# requirements.lock is what the dependency layer is built from; package-lock.json pins the
# Pyodide CPython that compiles its byte code.
SOURCE_INPUTS = (
    "app.py",
    "cdk.json",
    "requirements.txt",
    "requirements.lock",
    "package-lock.json",
    "infra",
    "handlers",
    "layers/shared",
)
# A different CDK library can synthesize a different template from the same source.
LIBRARY_INPUTS = ("aws-cdk-lib", "constructs", "cdk-nag", "jsii")
ASSET_METADATA_CONTEXT = {"aws:cdk:enable-asset-metadata": "true"}
# Written last into a finished assembly: a directory without it is not one.
COMPLETE_MARKER = ".synthesized"
# Each assembly holds a copy of the dependency layer (about 30 MB); older ones are removed beyond this many.
KEEP_ASSEMBLIES = 3
SYNTH_TIMEOUT_SECONDS = 600


class SynthesisError(RuntimeError):
    """`python app.py` failed (bad context, no dependency layer) or produced no stack template."""


def _skipped(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo")


def _input_files(root: Path) -> Iterable[Path]:
    for entry in SOURCE_INPUTS:
        path = root / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not _skipped(p.relative_to(root)))


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARY_INPUTS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def assembly_key(context: Mapping[str, str] | None = None, *, root: Path = REPO_ROOT) -> str:
    """The cache key of a synthesis: a digest of every input file (path, content), the context, the CDK versions."""
    digest = hashlib.sha256()
    for path in _input_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(_full_context(context), sort_keys=True).encode())
    digest.update(json.dumps(_library_versions(), sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _full_context(context: Mapping[str, str] | None) -> dict[str, str]:
    values = {str(key): str(value) for key, value in (context or {}).items()}
    return {**values, **ASSET_METADATA_CONTEXT}


def _run_app(outdir: Path, context: Mapping[str, str], root: Path) -> None:
    command = [sys.executable, str(root / "app.py")]
    for key, value in context.items():
        command += ["-c", f"{key}={value}"]
    # The tree's own import roots, as the development environment's path has them (make's venv):
    # this tree's shared package, whichever checkout the venv was made for.
    roots = [str(root), str(root / "layers" / "shared" / "python"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "CDK_OUTDIR": str(outdir), "PYTHONPATH": os.pathsep.join(filter(None, roots))}
    try:
        completed = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise SynthesisError(f"`python app.py` did not finish within {SYNTH_TIMEOUT_SECONDS}s") from error
    if completed.returncode != 0:
        # jsii's framed node-version banner (lines like `b'!!  ...  !!\\n'`) is not the reason; leave it out.
        lines = [line for line in (completed.stderr or completed.stdout).strip().splitlines() if "!!" not in line[:6]]
        tail = "\n  ".join(lines[-15:])
        raise SynthesisError(f"`python app.py` failed with exit code {completed.returncode}:\n  {tail}")


def _prune(cache_dir: Path, keep: Path) -> None:
    # A staging directory this old belongs to a synthesis that was killed; a live one would have timed out.
    for staging in cache_dir.glob("*.staging-*"):
        if time.time() - staging.stat().st_mtime > 2 * SYNTH_TIMEOUT_SECONDS:
            shutil.rmtree(staging, ignore_errors=True)
    finished = [d for d in cache_dir.iterdir() if d.is_dir() and (d / COMPLETE_MARKER).is_file()]
    finished.sort(key=lambda d: (d / COMPLETE_MARKER).stat().st_mtime, reverse=True)
    for stale in [d for d in finished if d != keep][KEEP_ASSEMBLIES - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


def synthesized_dir(
    context: Mapping[str, str] | None = None, *, root: Path = REPO_ROOT, cache_dir: Path | None = None
) -> tuple[Path, bool]:
    """The assembly directory for these inputs, synthesizing it first unless cached; and whether it was cached."""
    cache_dir = cache_dir or root / ".build" / "assembly"
    key = assembly_key(context, root=root)
    outdir = cache_dir / key
    if (outdir / COMPLETE_MARKER).is_file():
        return outdir, True

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Synthesize beside the cache and rename into place: an interrupted synthesis never
    # leaves a directory that looks finished, and two concurrent ones do not interleave.
    staging = cache_dir / f"{key}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    try:
        _run_app(staging, _full_context(context), root)
        if not (staging / "manifest.json").is_file():
            raise SynthesisError(f"`python app.py` wrote no manifest.json into {staging}")
        (staging / COMPLETE_MARKER).write_text(
            json.dumps({"key": key, "seconds": round(time.monotonic() - started, 2)}) + "\n"
        )
        try:
            staging.rename(outdir)
        except OSError:
            # Another process finished the same key first; its assembly is as good as ours.
            if not (outdir / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(cache_dir, keep=outdir)
    return outdir, False


def synthesize(
    context: Mapping[str, str] | None = None, *, root: Path = REPO_ROOT, cache_dir: Path | None = None
) -> CloudAssembly:
    """The assembly `python app.py -c key=value ...` produces for `context`; cached while the inputs are unchanged."""
    directory, cached = synthesized_dir(context, root=root, cache_dir=cache_dir)
    return CloudAssembly.load(directory, cached=cached, context={str(k): str(v) for k, v in (context or {}).items()})
