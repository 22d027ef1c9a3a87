"""`python -m local publish|listen|stats|...` pointed at a "deployed" stack by an outputs file, as subprocesses.

The outputs file is what `cdk deploy --outputs-file` writes, filled in with the local stack's addresses:
WebSocketUrl is the local gateway, AdminApiUrl its /admin routes (IAM-authorised: the profile's key is
registered with the stack as an operator allowed execute-api:Invoke), EventBusName the moto bus. Credentials
come from a throwaway AWS profile, so the commands take the same code path as against AWS: the profile's
session, a signed admin request, a token that must be given.
Every wait is bounded: a subprocess has a deadline, and listen exits on its own after --count messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.sigv4 import Credentials
from local.stack.local_stack import LocalStack
from tests.e2e.conftest import Client

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STACK = "QuantTrade-e2e"
PROFILE = "e2e-cli"
DEADLINE = 60.0

Connect = Callable[..., Awaitable[Client]]


@dataclass
class Target:
    outputs: str  # the outputs file
    env: dict[str, str]  # the subprocesses' environment: the throwaway profile, no other AWS settings
    endpoint: str  # moto, for publish's EventBridge calls
    bus: str  # the stage's bus, as the EventBusName output names it


@dataclass
class Finished:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def target(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Target:
    root = tmp_path_factory.mktemp("cli")
    outputs = root / "outputs.json"
    outputs.write_text(
        json.dumps(
            {
                STACK: {
                    "WebSocketUrl": local_stack.websocket_url,
                    "ManagementApiEndpoint": local_stack.management_endpoint,
                    "EventBusName": local_stack.event_bus_name,
                    "AdminApiUrl": local_stack.http_url + "/admin",
                }
            },
            indent=2,
        )
    )
    operator = Credentials("AKIDE2ECLI", "e2e-cli-secret")
    if local_stack.principals.get(operator.access_key_id) is None:
        invoke = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "arn:aws:execute-api:*:*:*/*/GET/*"}
        local_stack.principals.register_user("e2e-operator", operator, [{"Statement": [invoke]}])
    (root / "credentials").write_text(
        f"[{PROFILE}]\naws_access_key_id = AKIDE2ECLI\naws_secret_access_key = e2e-cli-secret\n"
    )
    (root / "config").write_text(f"[profile {PROFILE}]\nregion = us-east-1\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "QT_"))}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(root / "credentials"),
        AWS_CONFIG_FILE=str(root / "config"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    return Target(str(outputs), env, local_stack.aws_endpoint_url, local_stack.event_bus_name)


async def spawn(target: Target, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "local",
        *argv,
        cwd=REPO,
        env=target.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = DEADLINE) -> Finished:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"the command did not exit within {timeout}s; stdout {out!r}, stderr {err!r}") from None
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


async def run_cli(target: Target, *argv: str) -> Finished:
    return await finish(await spawn(target, *argv))


async def read_line_until(process: asyncio.subprocess.Process, wanted: str, timeout: float = DEADLINE) -> list[str]:
    """stdout lines up to and including the first one containing `wanted`."""
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await process.stdout.readline()
            if not raw:
                assert process.stderr is not None
                err = (await process.stderr.read()).decode()
                raise AssertionError(f"stdout ended before {wanted!r}; got {lines}, stderr {err!r}")
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if wanted in line:
                return lines


def tick(symbol: str, price: float) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "price": price,
        "bid": round(price - 0.01, 2),
        "ask": round(price + 0.01, 2),
        "volume": 500.0,
        "timestamp": "2026-03-02T14:30:00Z",
    }


async def test_publish_with_outputs_and_a_profile_reaches_a_subscriber(target: Target, connect: Connect) -> None:
    watcher = await connect("cli-deployed-watcher")
    await watcher.request("subscribe", streams=[{"stream_type": "system_status"}])
    detail = json.dumps({"service": "risk-engine", "status": "degraded", "message": "published by the CLI"})
    argv = ["publish", "SystemStatus", detail, "--outputs", target.outputs, "--profile", PROFILE]
    done = await run_cli(target, *argv, "--endpoint", target.endpoint)
    assert done.code == 0, done.err
    printed = json.loads(done.out)
    assert printed["EventBusName"] == target.bus and printed["DetailType"] == "SystemStatus"
    status = await watcher.expect(lambda m: m.get("payload", {}).get("event_id") == printed["EventId"], what="it")
    assert status["message_type"] == "system_status"
    assert status["payload"]["message"] == "published by the CLI"


async def test_listen_with_outputs_and_a_token_prints_the_ticks_and_exits_after_count(
    target: Target, mint: Callable[..., str], publish: Callable[[str, dict[str, Any]], str]
) -> None:
    # A symbol no other test publishes: fan-out caches a stream's audience, and this one must be fresh.
    token = mint("cli-listener")
    argv = ["listen", "--outputs", target.outputs, "--token", token, "--stream", "market_data:CLIX"]
    process = await spawn(target, *argv, "--count", "2", "--seconds", str(DEADLINE))
    try:
        # The subscribe reply is printed once the subscription is stored: from then on, ticks reach the listener.
        before = await read_line_until(process, " subscribe ")
        ids = [publish("MarketData", tick("CLIX", price)) for price in (42.5, 43.75)]
        done = await finish(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert done.code == 0, done.err
    lines = before + done.out.splitlines()
    kinds = [line.split()[1] for line in lines]
    assert "connect" in kinds and "subscribe" in kinds  # the replies to hello and subscribe, in either order
    ticks = [line for line in lines if line.split()[1] == "market_data"]
    assert len(ticks) == 2, lines
    # Each published tick is printed once, with its price, in seq order: the order the ticks entered their FIFO
    # group, which the pipe's concurrent pollers may make differ from the publish order (ADR 0002).
    unprinted = dict(zip(ids, (42.5, 43.75), strict=True))
    seqs = []
    for line in ticks:
        assert " market_data:CLIX #" in line
        seqs.append(int(line.split(" market_data:CLIX #", 1)[1].split()[0]))
        payload = json.loads(line[line.index("{") :])
        assert unprinted.pop(payload["event_id"]) == payload["price"]
    assert unprinted == {}
    assert seqs[1] == seqs[0] + 1
    assert token not in done.out + done.err


async def test_listen_to_a_deployed_stack_without_a_token_says_how_to_get_one(target: Target) -> None:
    done = await run_cli(target, "listen", "--outputs", target.outputs, "--stream", "alerts", "--count", "1")
    assert done.code == 1
    assert "needs an access token: pass --token TOKEN or set $QT_TOKEN" in done.err
    assert f"QT_TOKEN=$(python -m local token --stack {STACK})" in done.err
    assert done.out == ""


async def test_token_with_outputs_signs_with_the_stacks_secret_and_the_stack_lets_it_in(
    target: Target, local_stack: LocalStack, connect: Connect
) -> None:
    # GIVEN the outputs file with the stack's JwtSecretArn output, as the stack resolves it (a moto secret that
    # holds the key the functions verify with), and the profile's Secrets Manager calls going to moto
    assert local_stack.deployment is not None
    arn = local_stack.deployment.outputs()["JwtSecretArn"]
    outputs = Path(target.outputs).with_name("token-outputs.json")
    document = json.loads(Path(target.outputs).read_text())
    document[STACK]["JwtSecretArn"] = arn
    outputs.write_text(json.dumps(document))
    on_moto = Target(
        str(outputs), {**target.env, "AWS_ENDPOINT_URL_SECRETS_MANAGER": target.endpoint}, target.endpoint, target.bus
    )
    # WHEN a token is minted from it through the profile
    argv = ["token", "--outputs", str(outputs), "--profile", PROFILE, "--user", "cli-minted", "--level", "basic"]
    done = await run_cli(on_moto, *argv)
    assert done.code == 0, done.err
    token = done.out.strip()
    # THEN the stack's authorizer lets it in, as that user
    client = await connect("cli-minted", token=token)
    reply = await client.hello()
    assert reply["payload"]["user_id"] == "cli-minted"


async def test_stats_and_the_admin_routes_with_outputs_are_signed_requests_to_admin_api_url(
    target: Target, connect: Connect
) -> None:
    client = await connect("cli-admin-watched")
    await client.hello()
    await client.request("subscribe", streams=[{"stream_type": "alerts"}])
    joined = await client.request("joinRoom", room="desk-cli")
    assert joined["message_type"] == "join_room", joined
    assert client.client_id is not None
    deployed = ["--outputs", target.outputs, "--stack", STACK, "--profile", PROFILE]

    stats, info, subscriptions, members, missing = await asyncio.gather(
        run_cli(target, "stats", *deployed),
        # "--": a connection id may start with "-", which argparse would take for an option
        run_cli(target, "connection", *deployed, "--", client.client_id),
        run_cli(target, "subscriptions", *deployed, "--", client.client_id),
        run_cli(target, "members", "desk-cli", *deployed),
        run_cli(target, "connection", "no-such-connection=", *deployed),
    )
    for done in (stats, info, subscriptions, members):
        assert done.code == 0, done.err
        assert done.out.startswith("{\n  ")  # indented JSON
    counts = json.loads(stats.out)
    assert counts["connections"] >= 1 and counts["rooms"] >= 1 and counts["subscriptions"] >= 1
    connection = json.loads(info.out)
    assert connection["user_id"] == "cli-admin-watched" and connection["rooms"] == ["desk-cli"]
    assert [s["stream_type"] for s in json.loads(subscriptions.out)["subscriptions"]] == ["alerts"]
    assert client.client_id in json.loads(members.out)["members"]

    assert missing.code == 1 and missing.out == ""
    assert f"{target_admin_url(target)}/connections/no-such-connection%3D: HTTP 404" in missing.err
    assert "no connection no-such-connection=" in missing.err


def target_admin_url(target: Target) -> str:
    with open(target.outputs, encoding="utf-8") as handle:
        return str(json.load(handle)[STACK]["AdminApiUrl"])
