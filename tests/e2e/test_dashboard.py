"""The dashboard in a real browser: headless Chromium driven over the Chrome DevTools Protocol.

No Selenium or Playwright: Chromium's own DevTools WebSocket, spoken with the
`websockets` package. The page talks to the local stack like any user's browser.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from local.signed_http import signed_request
from local.stack.local_stack import LocalStack
from tests.e2e.conftest import Client, eventually

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"headless Chromium not installed at {CHROMIUM} (apt-get install chromium)"
    ),
]

XSS = "<img src=x onerror=alert(1)>"


class Browser:
    """One headless Chromium process with a fresh profile."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="qt-chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def devtools_port(self, timeout: float = 30.0) -> int:
        # With port 0, Chromium writes the port it bound to this file in the profile.
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def page_websocket_url(self, port: int, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                pages = [t for t in json.loads(response.read()) if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.05)
        raise RuntimeError("chromium has no page target")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """The DevTools Protocol for one page: commands by id, page errors and dialogs collected."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(str(details.get("exception", {}).get("description") or details.get("text")))
            elif message.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(message["params"].get("message", ""))
                await self.ws.send(
                    json.dumps(
                        {"id": next(self.ids), "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}
                    )
                )

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        await self.ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, what: str | None = None) -> Any:
        return await eventually(lambda: self.evaluate(expression), timeout=timeout, what=what or expression)


@pytest.fixture(scope="module")
def browser() -> Iterator[tuple[Browser, int]]:
    chromium = Browser()
    try:
        port = chromium.devtools_port()
        yield chromium, port
    finally:
        chromium.close()


@pytest.fixture
async def page(browser: tuple[Browser, int]) -> AsyncIterator[Page]:
    chromium, port = browser
    url = await asyncio.to_thread(chromium.page_websocket_url, port)
    async with websockets.connect(url, max_size=None) as ws:
        devtools = Page(ws)
        await devtools.send("Page.enable")
        await devtools.send("Runtime.enable")
        try:
            yield devtools
        finally:
            await devtools.send("Page.navigate", url="about:blank")
            devtools.reader.cancel()


def admin(local_stack: LocalStack, path: str) -> Any:
    request = signed_request("GET", f"{local_stack.http_url}/admin{path}", region=local_stack.config.region)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def test_dashboard_shows_live_prices_escaped_chat_and_survives_a_forced_reconnect(
    local_stack: LocalStack,
    page: Page,
    connect: Callable[..., Awaitable[Client]],
    publish: Callable[[str, dict[str, Any]], str],
    management: Any,
) -> None:
    # GIVEN the dashboard opened with a token, watching AAPL and in room desk-ui
    token = local_stack.token("browser-user")
    await page.send("Page.navigate", url=f"{local_stack.dashboard_url}?token={token}&symbols=AAPL&room=desk-ui")
    await page.wait_for("window.quanttrade && window.quanttrade.status === 'connected' && !!window.quanttrade.clientId")
    first_id = await page.evaluate("window.quanttrade.clientId")
    # The token does not stay in the address bar.
    assert "token=" not in await page.evaluate("window.location.href")

    async def subscribed_and_joined(connection_id: str) -> bool:
        subscriptions = await asyncio.to_thread(admin, local_stack, f"/connections/{connection_id}/subscriptions")
        members = await asyncio.to_thread(admin, local_stack, "/rooms/desk-ui/members")
        keys = {f"{s['stream_type']}:{s.get('symbol') or '*'}" for s in subscriptions["subscriptions"]}
        return "market_data:AAPL" in keys and connection_id in members["members"]

    await eventually(lambda: subscribed_and_joined(first_id), what="the dashboard's subscription and room")

    # WHEN the market data service publishes an AAPL tick through EventBridge
    publish("MarketData", {"symbol": "AAPL", "price": 123.45, "bid": 123.44, "ask": 123.46, "volume": 300.0,
                           "timestamp": "2026-03-02T14:30:00Z"})  # fmt: skip

    # THEN the price table shows it
    price_cell = "document.querySelector('tr[data-symbol=\"AAPL\"] .price')"
    await page.wait_for(f"{price_cell} && {price_cell}.textContent === '123.45'", what="the AAPL price")
    assert await page.evaluate("document.querySelector('tr[data-symbol=\"AAPL\"] .bid').textContent") == "123.44"
    assert await page.evaluate("document.querySelector('tr[data-symbol=\"AAPL\"] .ask').textContent") == "123.46"

    # WHEN another user sends markup to the room
    other = await connect("mallory")
    await other.request("joinRoom", room="desk-ui")
    await other.request("sendRoomMessage", room="desk-ui", message=XSS)

    # THEN the page shows it as text: no element was created and nothing ran
    chat_texts = "Array.from(document.querySelectorAll('#chat .text')).map(e => e.textContent)"
    await page.wait_for(f"{chat_texts}.includes({json.dumps(XSS)})", what="the room message")
    assert await page.evaluate("document.querySelectorAll('#chat img').length") == 0
    assert "&lt;img" in await page.evaluate("document.getElementById('chat').innerHTML")
    assert page.dialogs == []

    # WHEN the gateway drops the dashboard's connection (DELETE @connections/{id})
    await asyncio.to_thread(management.delete_connection, ConnectionId=first_id)

    # THEN it reconnects on its own, resumes its session, and updates continue
    await page.wait_for(
        f"window.quanttrade.reconnects >= 1 && window.quanttrade.status === 'connected'"
        f" && !!window.quanttrade.clientId && window.quanttrade.clientId !== {json.dumps(first_id)}",
        what="the reconnect",
    )
    second_id = await page.evaluate("window.quanttrade.clientId")
    await eventually(lambda: subscribed_and_joined(second_id), what="the resumed subscription and room")

    async def shows_new_price() -> bool:
        # Fan-out caches a stream's audience for a moment; a tick after that reaches the new connection.
        publish("MarketData", {"symbol": "AAPL", "price": 124.56, "volume": 100.0, "timestamp": "2026-03-02T14:31:00Z"})
        try:
            await page.wait_for(f"{price_cell}.textContent === '124.56'", timeout=1.0)
        except AssertionError:
            return False
        return True

    await eventually(shows_new_price, timeout=20, what="a price update after the reconnect")
    await other.request("sendRoomMessage", room="desk-ui", message="still there?")
    await page.wait_for(f"{chat_texts}.includes('still there?')", what="a room message after the reconnect")
    assert page.errors == []
