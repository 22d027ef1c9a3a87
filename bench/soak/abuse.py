"""The abusive clients: oversized frames, floods, garbage, bad tokens, forbidden streams, and what each should get."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from typing import Any

from bench.soak.clients import REPLY_TIMEOUT, Tally, count_refusal, open_client, token_for, unpack


async def _expect_close(ws: Any, timeout: float = REPLY_TIMEOUT) -> tuple[int | None, Counter[str]]:
    """Read until the server closes (or `timeout`); the close code (None: still open) and the error codes seen."""
    codes: Counter[str] = Counter()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            async for frame in ws:
                for item in unpack(json.loads(frame)):
                    if item.get("message_type") == "error":
                        codes[str((item.get("payload") or {}).get("error_code"))] += 1
    if ws.close_code is None:
        await ws.close()
        return None, codes
    return ws.close_code, codes


async def _replies(ws: Any, request_ids: set[str], anonymous: int = 0) -> tuple[dict[str, str], list[str]]:
    """Error code (or message type) of the replies to these requests, and of `anonymous` errors without an id
    (a frame that is not JSON cannot carry one back)."""
    answers: dict[str, str] = {}
    unnamed: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REPLY_TIMEOUT):
            while not request_ids <= answers.keys() or len(unnamed) < anonymous:
                for item in unpack(json.loads(await ws.recv())):
                    payload = item.get("payload") or {}
                    kind = payload.get("error_code") or str(item.get("message_type"))
                    rid = item.get("request_id")
                    if rid in request_ids:
                        answers[rid] = kind
                    elif rid is None and item.get("message_type") == "error":
                        unnamed.append(kind)
    return answers, unnamed


async def abuse_oversized(url: str, size: int) -> dict[str, Any]:
    ws = await open_client(url, token_for(f"abuse-big-{os.urandom(4).hex()}"))
    # One frame: websockets does not fragment a str message, as browsers do not.
    with contextlib.suppress(Exception):
        await ws.send(json.dumps({"action": "ping", "pad": "x" * size}))
    code, _ = await _expect_close(ws)
    return {"close_code": code}


async def abuse_flood(url: str, messages: int = 300) -> dict[str, Any]:
    ws = await open_client(url, token_for(f"abuse-flood-{os.urandom(4).hex()}"))
    sent = 0
    with contextlib.suppress(Exception):
        for index in range(messages):
            await ws.send(json.dumps({"action": "ping", "request_id": f"f{index}"}))
            sent += 1
    # The service closes a flooder after its third RATE_LIMIT warning; ten seconds is plenty for that.
    code, codes = await _expect_close(ws, timeout=10.0)
    return {"close_code": code, "error_codes": dict(codes), "sent": sent}


async def abuse_garbage(url: str) -> dict[str, Any]:
    ws = await open_client(url, token_for(f"abuse-junk-{os.urandom(4).hex()}"))
    await ws.send("{this is not json")
    await ws.send(json.dumps({"action": "launchMissiles", "request_id": "unknown"}))
    await ws.send(json.dumps({"action": "subscribe", "streams": "everything", "request_id": "malformed"}))
    answers, unnamed = await _replies(ws, {"unknown", "malformed"}, anonymous=1)
    await ws.close()
    return {
        "unknown_action": answers.get("unknown"),
        "malformed": answers.get("malformed"),
        "invalid_json": unnamed[0] if unnamed else None,
    }


async def abuse_tokens(url: str) -> dict[str, Any]:
    from local.tokens import mint_token

    candidates = {
        "no_token": None,
        "garbage": "not-a-jwt",
        "expired": token_for(f"abuse-old-{os.urandom(4).hex()}", expires_in=-60),
        "wrong_secret": mint_token("a-different-secret-that-is-long-enough", "mallory"),
    }
    outcomes: dict[str, Any] = {}
    for name, token in candidates.items():
        tally = Tally()
        try:
            ws = await open_client(url, token)
        except Exception as error:
            count_refusal(error, tally)
            outcomes[name] = next(iter(tally.http_refusals), None) or next(iter(tally.other_failures), None)
        else:
            outcomes[name] = "admitted"
            await ws.close()
    return outcomes


async def abuse_forbidden(url: str) -> dict[str, Any]:
    ws = await open_client(
        url, token_for(f"abuse-perm-{os.urandom(4).hex()}", permissions=["read:market_data", "rooms:join"])
    )
    await ws.send(
        json.dumps({"action": "subscribe", "streams": [{"stream_type": "predictions"}], "request_id": "stream"})
    )
    await ws.send(json.dumps({"action": "joinRoom", "room": "admin.ops", "request_id": "admin-room"}))
    await ws.send(json.dumps({"action": "joinRoom", "room": "predictions_AAPL", "request_id": "data-room"}))
    await ws.send(json.dumps({"action": "joinRoom", "room": "no spaces allowed!", "request_id": "bad-room"}))
    answers, _ = await _replies(ws, {"stream", "admin-room", "data-room", "bad-room"})
    await ws.close()
    return answers


EXPECTED = {
    "oversized_frame": {"close_code": 1009},
    "oversized_message": {"close_code": 1009},
    "garbage": {"unknown_action": "UNKNOWN_ACTION", "malformed": "INVALID_MESSAGE", "invalid_json": "INVALID_MESSAGE"},
    # No token: API Gateway refuses before the authorizer (401); a refused token: the authorizer's Deny (403).
    "tokens": {"no_token": "401", "garbage": "403", "expired": "403", "wrong_secret": "403"},
    "forbidden": {
        "stream": "FORBIDDEN",
        "admin-room": "FORBIDDEN",
        "data-room": "FORBIDDEN",
        "bad-room": "INVALID_ROOM",
    },
}


def _flood_as_expected(outcome: dict[str, Any]) -> bool:
    # RATE_LIMIT replies, then the service closes the connection (DELETE @connections: 1000).
    return outcome.get("error_codes", {}).get("RATE_LIMIT", 0) > 0 and outcome.get("close_code") is not None


async def abuse_round(url: str) -> dict[str, Any]:
    scenarios = {
        "oversized_frame": abuse_oversized(url, 40 * 1024),
        "oversized_message": abuse_oversized(url, 130 * 1024),
        "flood": abuse_flood(url),
        "garbage": abuse_garbage(url),
        "tokens": abuse_tokens(url),
        "forbidden": abuse_forbidden(url),
    }
    results = await asyncio.gather(*scenarios.values(), return_exceptions=True)
    return {
        name: (result if not isinstance(result, BaseException) else {"failed": f"{type(result).__name__}: {result}"})
        for name, result in zip(scenarios, results, strict=True)
    }


async def abuser(url: str, interval: float, until: float, rounds: list[dict[str, Any]]) -> None:
    if interval <= 0:
        return
    # A round takes up to ~10 s (a flooder is given that long to be cut off): start none that would overrun.
    while time.monotonic() + 12.0 < until:
        started = time.monotonic()
        rounds.append(await abuse_round(url))
        await asyncio.sleep(max(0.0, min(interval - (time.monotonic() - started), until - time.monotonic())))


def summarise_abuse(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in ("oversized_frame", "oversized_message", "flood", "garbage", "tokens", "forbidden"):
        outcomes = [r[name] for r in rounds if name in r]
        if name == "flood":
            good = sum(_flood_as_expected(o) for o in outcomes)
        else:
            good = sum(all(o.get(k) == v for k, v in EXPECTED[name].items()) for o in outcomes)
        observed: Counter[str] = Counter(json.dumps(o, sort_keys=True) for o in outcomes)
        summary[name] = {
            "runs": len(outcomes),
            "as_expected": good,
            "expected": EXPECTED.get(name, "RATE_LIMIT, then closed"),
            "observed": {text: count for text, count in observed.most_common(3)},
        }
    return summary
