"""Compile every module of a layer tree to byte code, as the Lambda runtime would import it.

This file runs inside the *target* interpreter (the Lambda runtime's CPython
version): directly when the build machine has that version, otherwise inside
Pyodide's CPython (see infra/bytecode.js), so it uses the standard library only.

    python infra/compile_bytecode.py TREE PREFIX TARGET_VERSION

Why each choice:
- Lambda mounts code read-only, so an interpreter there can never write its own
  `__pycache__`: without these files every cold start compiles every import.
- `UNCHECKED_HASH` pycs are used without comparing the source's mtime, and carry
  no mtime, so rebuilding gives the same bytes (the asset hash is over them).
- `PREFIX` is where the tree sits on Lambda (`/opt/python` for a layer), so
  tracebacks name real paths, and the build directory leaks into no file.
- Files in the order of their sorted paths, and the caller fixes
  PYTHONHASHSEED, so set and frozenset constants marshal the same every time.
"""

from __future__ import annotations

import json
import os
import py_compile
import sys


def compile_tree(tree: str, prefix: str) -> dict[str, object]:
    compiled = 0
    failures: list[str] = []
    for directory, subdirs, files in os.walk(tree):
        subdirs.sort()
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            source = os.path.join(directory, name)
            relative = os.path.relpath(source, tree).replace(os.sep, "/")
            try:
                py_compile.compile(
                    source,
                    dfile=f"{prefix.rstrip('/')}/{relative}",
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
            except py_compile.PyCompileError as error:
                failures.append(f"{relative}: {error.msg.strip().splitlines()[-1]}")
            else:
                compiled += 1
    return {
        "version": "{}.{}.{}".format(*sys.version_info[:3]),
        "cache_tag": sys.implementation.cache_tag,
        "compiled": compiled,
        "failures": failures,
    }


def main(argv: list[str]) -> int:
    tree, prefix, target = argv
    running = "{}.{}".format(*sys.version_info[:2])
    if running != target:
        print(json.dumps({"error": f"this interpreter is Python {running}, the target is {target}"}))
        return 2
    print(json.dumps(compile_tree(tree, prefix)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
