"""Each function's unzipped size, its code plus its layers, against Lambda's deployment package quota.

Lambda refuses a function whose code and layers together exceed 250 MB unzipped
("Unzipped size must be smaller than 262144000 bytes"), and only at deploy
time, after everything was uploaded. The synth measures the same directories
the assets are zipped from, with the same exclusions, and fails first.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000


class PackageTooLarge(RuntimeError):
    """A function's code plus layers would exceed Lambda's unzipped quota."""


@dataclass(frozen=True)
class Part:
    """One asset a function is deployed with: its code or a layer."""

    label: str
    path: Path
    excludes: tuple[str, ...] = ()  # CDK asset `exclude` globs


@dataclass(frozen=True)
class PackageSize:
    function: str
    parts: tuple[tuple[str, int], ...]
    limit: int = field(default=LAMBDA_UNZIPPED_LIMIT_BYTES)

    @property
    def total(self) -> int:
        return sum(size for _, size in self.parts)

    def line(self) -> str:
        parts = " + ".join(f"{label} {size / 1e6:.2f}" for label, size in self.parts)
        share = 100 * self.total / self.limit
        return f"{self.function}: {self.total / 1e6:.2f} MB unzipped ({parts}), {share:.0f}% of the 250 MB quota"


def _excluded(relative: str, patterns: Iterable[str]) -> bool:
    # CDK matches a glob without a slash against every path segment (minimatch's
    # matchBase), and `**/x` means x at any depth: both reduce to a segment match.
    parts = relative.split("/")
    for pattern in patterns:
        tail = pattern.removeprefix("**/")
        if "/" in tail:
            if fnmatch.fnmatch(relative, pattern):
                return True
        elif any(fnmatch.fnmatch(part, tail) for part in parts):
            return True
    return False


def unzipped_size(path: Path, excludes: Sequence[str] = ()) -> int:
    """Bytes of the files an asset of `path` holds, as Lambda counts them once unzipped."""
    if not path.is_dir():
        raise PackageTooLarge(f"cannot measure {path}: it is not a directory")
    total = 0
    for file in path.rglob("*"):
        if file.is_file() and not _excluded(file.relative_to(path).as_posix(), excludes):
            total += file.stat().st_size
    return total


def measure(packages: Mapping[str, Sequence[Part]], limit: int = LAMBDA_UNZIPPED_LIMIT_BYTES) -> list[PackageSize]:
    """The size of every function's package; each directory is measured once however many functions share it."""
    cache: dict[tuple[Path, tuple[str, ...]], int] = {}
    sizes = []
    for function, parts in packages.items():
        measured = []
        for part in parts:
            key = (part.path.resolve(), part.excludes)
            if key not in cache:
                cache[key] = unzipped_size(part.path, part.excludes)
            measured.append((part.label, cache[key]))
        sizes.append(PackageSize(function, tuple(measured), limit))
    return sizes


def check(sizes: Sequence[PackageSize]) -> None:
    """Refuse the build if any function is over the quota, naming each one and what it is made of."""
    over = [size for size in sizes if size.total > size.limit]
    if over:
        raise PackageTooLarge(
            "Lambda refuses a function whose code plus layers exceed 250 MB unzipped:\n  "
            + "\n  ".join(size.line() for size in over)
        )


def report(sizes: Sequence[PackageSize]) -> str:
    return "\n".join(["Function packages (code + layers, unzipped):", *("  " + size.line() for size in sizes)])
