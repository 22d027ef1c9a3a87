"""Integration fixtures and helpers: the synthesized cloud assembly, once per session, for the tests
that run what the template declares, the stack's moto for the tests of its patches, and the readers
the service tests share (a connection's row, what it received, the error code of a reply)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.layers_build import BUILD_DIR, DepsLayerUnavailable, ensure_deps_layer
from local.cloud.assembly import CloudAssembly
from local.cloud.synth import synthesize
from local.moto_server import MotoServer
from quanttrade_ws.models import Connection
from tests.conftest import Wired


def connection_of(wired: Wired, connection_id: str) -> Connection:
    """The connection's stored row; fails the test when there is none."""
    found = wired.store.get_connection(connection_id)
    assert found is not None, f"no connection row for {connection_id}"
    return found


def received(wired: Wired, connection_id: str) -> list[dict[str, Any]]:
    """Everything the connection received, decoded."""
    return wired.gateway.messages(connection_id)


def error_code(message: dict[str, Any]) -> str | None:
    """The error code of an `error` message; None for any other message."""
    return message["payload"].get("error_code") if message["message_type"] == "error" else None


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


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """The stack's moto server (its own process, every patch of the stack), without the TTL sweep."""
    server = MotoServer(port=0, ttl_sweep_seconds=0).start()
    try:
        yield server
    finally:
        server.stop()
