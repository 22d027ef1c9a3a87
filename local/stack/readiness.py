"""What `/ready` asks of the stack beyond the gateway: the functions' AWS endpoint answers, every table and
queue of the template exists in moto; and `ready`, the client side, for tools and tests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local.moto_server import MotoServer


class ReadinessProbes:
    """Blocking probes of moto and the front door, run off the event loop on threads of their own."""

    def __init__(self, moto: MotoServer) -> None:
        self._moto = moto
        self._threads: ThreadPoolExecutor | None = None
        self._clients: dict[str, Any] = {}

    async def front_door_answers(self, endpoint_url: str) -> bool:
        """The functions' AWS endpoint answers (an unsigned request is refused by the door itself, never
        reaching moto: a cheap probe; whether moto answers is what the table and queue checks ask)."""

        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{endpoint_url}/", timeout=1.5) as response:
                    return response.status < 500
            except urllib.error.HTTPError as error:
                return error.code < 500

        return await self._probe(probe)

    async def tables_exist(self, names: Collection[str]) -> bool:
        wanted = set(names)

        def probe() -> bool:
            existing = set(self._client("dynamodb").list_tables().get("TableNames", []))
            return wanted <= existing

        return await self._probe(probe)

    async def queues_exist(self, urls: Collection[str]) -> bool:
        def probe() -> bool:
            sqs = self._client("sqs")
            for url in urls:
                sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            return bool(urls)

        return await self._probe(probe)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        self._clients.clear()

    async def _probe(self, probe: Callable[[], bool]) -> bool:
        # Probes have threads of their own: on the loop's shared pool they would queue behind the
        # simulator's and tools' blocking calls, and a probe that waits for a thread is not a slow moto.
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=3, thread_name_prefix="ready-probe")
        return await asyncio.get_running_loop().run_in_executor(self._threads, probe)

    def _client(self, service: str) -> Any:
        # One client per service for every probe: building a boto3 client costs more CPU than moto's answer.
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = self._moto.client(service, read_timeout=5, connect_timeout=2)
        return client


def ready(http_url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET /ready of a running stack (the answer is JSON whether ready or not)."""
    try:
        with urllib.request.urlopen(f"{http_url}/ready", timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return dict(json.loads(error.read()))
