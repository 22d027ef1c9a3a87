"""The synthesized cloud assembly, once per session, for the tests that run what the template declares."""

from __future__ import annotations

import pytest

from infra.layers_build import BUILD_DIR, DepsLayerUnavailable, ensure_deps_layer
from local.cloud import CloudAssembly, synthesize


@pytest.fixture(scope="session")
def assembly() -> CloudAssembly:
    """The app's cloud assembly with cdk.json's context, from .build/assembly/ when the inputs are unchanged.

    Only when the dependency layer can be neither built (no route to PyPI) nor taken from
    the cache does the synthesis use an empty stand-in layer, as the infra tests do.
    """
    context: dict[str, str] = {}
    try:
        ensure_deps_layer()
    except DepsLayerUnavailable:
        stand_in = BUILD_DIR / "deps-layer-stand-in"
        (stand_in / "python").mkdir(parents=True, exist_ok=True)
        context["deps_layer_dir"] = str(stand_in)
    return synthesize(context)
