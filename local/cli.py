"""The local stack's command line: run it, mint tokens, publish events, listen, read the admin API.

python -m local dev                       the whole backend with the simulator (what `make dev` runs)
python -m local token --user alice        a development access token
python -m local token --stack QuantTrade-prod --profile prod    one signed with a deployed stack's HS256 key
python -m local publish MarketData '{"symbol": "AAPL", ...}'
python -m local publish --file events/eventbridge/market_data.json
python -m local listen --stream market_data:AAPL --room desk-eu [--count N] [--seconds S]
python -m local stats                     also: connection ID, subscriptions ID, members ROOM

publish, listen and the admin commands target the local stack by default, or a deployed
one with `--outputs FILE` (what `cdk deploy --outputs-file` writes) and/or `--stack NAME`
(its outputs from CloudFormation), with `--profile` and `--region` for the credentials:

python -m local publish --outputs outputs.json --profile prod --file events/eventbridge/alert.json
python -m local listen --outputs outputs.json --token "$QT_TOKEN" --stream market_data:AAPL
python -m local stats --stack QuantTrade-prod --profile prod     (SigV4-signed, service execute-api)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_WS_URL = "ws://127.0.0.1:8081/"
DEFAULT_HTTP_URL = "http://127.0.0.1:8081"
DEFAULT_AWS_ENDPOINT = "http://127.0.0.1:4566"
ADMIN_PREFIX = "/admin"  # where the local gateway serves the admin API's routes


def _secret() -> str:
    """The HS256 key the running local stack holds.

    `$QT_JWT_SECRET` when set (`make dev` then stores that value in the stack's
    secret); otherwise the value the stack generated, read from its Secrets
    Manager through the outputs file `make dev` writes.
    """
    secret = os.environ.get("QT_JWT_SECRET")
    if secret:
        return secret
    from local.stack import OUTPUTS_FILE

    try:
        document = json.loads(OUTPUTS_FILE.read_text(encoding="utf-8"))
        outputs = next(iter(document.values()))
        endpoint, secret_arn = outputs["LocalAwsEndpoint"], outputs["LocalSigningKeySecretArn"]
    except (OSError, ValueError, StopIteration, KeyError, AttributeError):
        raise SystemExit(
            "no local stack is running (start it with `make dev`), and QT_JWT_SECRET is not set: "
            "there is no key to mint a token with"
        ) from None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from local.moto_server import CREDENTIALS

    make_client: Any = boto3.client
    client = make_client("secretsmanager", region_name=secret_arn.split(":")[3], endpoint_url=endpoint, **CREDENTIALS)
    try:
        return str(client.get_secret_value(SecretId=secret_arn)["SecretString"])
    except (BotoCoreError, ClientError) as error:
        raise SystemExit(f"cannot read the local stack's signing key at {endpoint}: {error}") from None


def local_event_bus() -> str:
    """The bus of the running local stack: the EventBusName output of the template it runs (it carries the stage)."""
    from local.stack import OUTPUTS_FILE

    try:
        document = json.loads(OUTPUTS_FILE.read_text(encoding="utf-8"))
        return str(next(iter(document.values()))["EventBusName"])
    except (OSError, ValueError, StopIteration, KeyError, AttributeError, TypeError):
        raise SystemExit(
            "no local stack is running (start it with `make dev`) to take the event bus name from: "
            "give --bus NAME, or --outputs/--stack for a deployed stack"
        ) from None


def _quiet_development_warnings() -> None:
    # The development secret is short on purpose: the warning says nothing a developer can act on.
    warnings.filterwarnings("ignore", message=r"The HMAC key is \d+ bytes long")


# ---------------------------------------------------------------------- dev


def cmd_dev(args: argparse.Namespace) -> int:
    from local.stack import LocalStack, StackConfig, configure_logging

    configure_logging(args.log_level)
    _quiet_development_warnings()
    config = StackConfig(
        host=args.host,
        gateway_port=args.port,
        moto_port=args.moto_port,
        moto_mode=args.moto_mode,
        idle_timeout=args.idle_timeout,
        max_connection_seconds=args.max_connection_duration,
        management_rate_per_second=args.management_rate,
        simulator=not args.no_simulator,
        simulator_rate=args.rate,
        log_level=args.handler_log_level,
        faults=args.faults,
        fault_seed=args.fault_seed,
        ttl_sweep_seconds=args.ttl_sweep or None,
    )

    async def run() -> None:
        stack = LocalStack(config)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await stack.start()
            _print_banner(stack, args.no_simulator)
            await stopping.wait()
            print("\nstopping: closing connections ($disconnect for each), pumps, simulator, moto ...", flush=True)
        finally:
            await stack.stop()
            print("stopped", flush=True)

    asyncio.run(run())
    return 0


def assembly_origin(stack: Any) -> str:
    directory = stack.assembly.directory
    shown = directory.relative_to(Path.cwd()) if directory.is_relative_to(Path.cwd()) else directory
    return f"{shown}, {'cached' if stack.assembly.cached else 'synthesized now'}"


def _print_banner(stack: Any, simulator_off: bool) -> None:
    token = stack.token("dev-user")
    url = stack.websocket_url
    lines = [
        "",
        "QuantTrade local stack is up",
        f"  WebSocket    {url}",
        f"  Dashboard    {stack.dashboard_url}?token={token}",
        f"  Management   {stack.management_endpoint}/@connections/{{connectionId}}",
        f"  Admin API    {stack.http_url}/admin/stats",
        f"  Ready        {stack.http_url}/ready",
        f"  AWS (moto)   {stack.aws_endpoint_url}  (DynamoDB, SQS, Secrets Manager, EventBridge bus "
        f"'{stack.event_bus_name}')",
        f"  Functions    {stack.aws_function_endpoint}  (each function's calls, checked against its role)",
        f"  Simulator    {'off' if simulator_off else 'on'}",
        *_fault_lines(stack.config),
        "",
        f"Started in {stack.startup_seconds:.1f} s from the synthesized template "
        f"({assembly_origin(stack)}); every function answered its samples in events/.",
        "",
        "Development token (every permission, premium, 24 h):",
        f"  {token}",
        "",
        "Try it:",
        f"  npx wscat -c '{url}?token={token}'",
        '  > {"action":"hello"}',
        '  > {"action":"subscribe","streams":[{"stream_type":"market_data","symbol":"AAPL"}]}',
        "  python -m local listen --stream market_data:AAPL --room desk-eu",
        "  python -m local publish --file events/eventbridge/alert.json",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _fault_lines(config: Any) -> list[str]:
    if not config.faults:
        return []
    rates = ", ".join(f"{name} {rate:.0%}" for name, rate in sorted(config.faults.items()))
    seed = "" if config.fault_seed is None else f", seed {config.fault_seed}"
    return [f"  Faults       {rates}{seed} of calls answered with AWS's own errors"]


# ---------------------------------------------------------------------- token


def cmd_token(args: argparse.Namespace) -> int:
    from local.tokens import mint_token
    from quanttrade_ws.auth import ALL_PERMISSIONS

    _quiet_development_warnings()
    permissions = args.permissions if args.permissions else list(ALL_PERMISSIONS)
    token = mint_token(
        signing_key(args),
        args.user,
        permissions=permissions,
        subscription_level=args.level,
        client_type=args.client_type,
        expires_in=args.expires,
        issuer=args.issuer,
        audience=args.audience,
    )
    print(token)
    return 0


def signing_key(args: argparse.Namespace) -> str:
    """The HS256 access-token key: the local stack's, or a deployed stack's (its JwtSecretArn secret)."""
    if not is_deployed(args):
        _local_only_profile(args, "signing key")
        return _secret()
    session = aws_session(args)
    stack = deployed_stack(args, session)
    assert stack is not None
    return read_signing_key(session, stack)


def read_signing_key(session: Any, stack: DeployedStack) -> str:
    """The value of the secret a deployed stack's JwtSecretArn output names, read with the session's credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    if SECRET_OUTPUT not in stack.outputs:
        if "UserPoolId" in stack.outputs:
            raise SystemExit(
                f"stack {stack.name} verifies access tokens of its Cognito user pool {stack.outputs['UserPoolId']} "
                f"(app client {stack.outputs.get('UserPoolClientId', '?')}): sign in there for a token; it has no "
                "HS256 key to mint one with"
            )
        stack.output(SECRET_OUTPUT)  # says which outputs there are
    arn = stack.outputs[SECRET_OUTPUT]
    parts = arn.split(":")
    if len(parts) < 7 or parts[2] != "secretsmanager":
        raise SystemExit(f"the {SECRET_OUTPUT} output of {stack.name} in {stack.origin} is no secret ARN: {arn!r}")
    try:
        client = session.client("secretsmanager", region_name=parts[3])
        return str(client.get_secret_value(SecretId=arn)["SecretString"])
    except ClientError as error:
        raise SystemExit(
            f"cannot read the signing key {arn}: {_aws_error(error)} "
            "(the credentials need secretsmanager:GetSecretValue on it, and kms:Decrypt if a key of yours encrypts it)"
        ) from None
    except (BotoCoreError, KeyError) as error:
        raise SystemExit(f"cannot read the signing key {arn}: {error}") from None


# ---------------------------------------------------------------------- deployed stacks

# The outputs read are infra/stack.py's CfnOutputs: WebSocketUrl (listen), EventBusName (publish), AdminApiUrl,
# JwtSecretArn (token).
TOKEN_ENV = "QT_TOKEN"
SECRET_OUTPUT = "JwtSecretArn"
DEFAULT_REGION = "us-east-1"
_EXECUTE_API_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class DeployedStack:
    """A deployed stack's CloudFormation outputs, from `cdk deploy --outputs-file` or DescribeStacks."""

    name: str
    outputs: dict[str, str]
    origin: str  # where the outputs came from, for error messages

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            known = ", ".join(sorted(self.outputs)) or "none"
            raise SystemExit(f"stack {self.name} has no {key} output in {self.origin} (it has: {known})")
        return value


def is_deployed(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "outputs", None) or getattr(args, "stack", None))


def read_outputs_file(path: str, stack: str | None = None) -> DeployedStack:
    """One stack's outputs from the file `cdk deploy --outputs-file` writes: {"<StackName>": {"<Output>": "..."}}."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise SystemExit(f"cannot read the outputs file {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise SystemExit(f"the outputs file {path} is not JSON: {error}") from None
    if not isinstance(document, dict) or not document or not all(isinstance(v, dict) for v in document.values()):
        raise SystemExit(
            f"{path} is not what `cdk deploy --outputs-file` writes: "
            '{"<StackName>": {"WebSocketUrl": "...", "EventBusName": "...", "AdminApiUrl": "..."}}'
        )
    names = ", ".join(sorted(document))
    if stack is None:
        if len(document) > 1:
            raise SystemExit(f"{path} holds several stacks ({names}): choose one with --stack NAME")
        (stack,) = document
    elif stack not in document:
        raise SystemExit(f"{path} has no stack {stack!r}; it holds: {names}")
    outputs = {str(key): str(value) for key, value in document[stack].items()}
    return DeployedStack(stack, outputs, path)


def describe_stack_outputs(session: Any, stack: str) -> DeployedStack:
    """A stack's outputs from CloudFormation DescribeStacks, with the session's credentials and region."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = session.client("cloudformation")
        region = client.meta.region_name
        stacks = client.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as error:
        raise SystemExit(f"cannot describe the stack {stack!r}: {_aws_error(error)}") from None
    except BotoCoreError as error:
        raise SystemExit(f"cannot describe the stack {stack!r}: {error}") from None
    if not stacks:
        raise SystemExit(f"CloudFormation ({region}) has no stack {stack!r}")
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stacks[0].get("Outputs") or []}
    return DeployedStack(stack, outputs, f"CloudFormation ({region})")


def aws_session(args: argparse.Namespace) -> Any:
    """A boto3 session for a deployed stack: --profile (or the default chain) and --region (or $AWS_REGION)."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.Session(profile_name=args.profile, region_name=args.region or os.environ.get("AWS_REGION"))
    except BotoCoreError as error:  # ProfileNotFound above all
        raise SystemExit(f"{error} (`aws configure list-profiles` lists them)") from None


def deployed_stack(args: argparse.Namespace, session: Any = None) -> DeployedStack | None:
    """The stack --outputs/--stack name, or None for the local stack. CloudFormation is asked only without --outputs."""
    if args.outputs:
        return read_outputs_file(args.outputs, args.stack)
    if args.stack:
        return describe_stack_outputs(session if session is not None else aws_session(args), args.stack)
    return None


def _aws_error(error: Any) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'Error')}: {details.get('Message', error)}"


def _local_only_profile(args: argparse.Namespace, what: str) -> None:
    if args.profile:
        raise SystemExit(f"--profile is for a deployed stack's {what}: give --outputs FILE or --stack NAME with it")


# ---------------------------------------------------------------------- publish


def build_entry(detail_type: str | None, payload: dict[str, Any], bus: str) -> dict[str, Any]:
    """A PutEvents entry from a detail-type and a detail, or from a whole EventBridge event."""
    from quanttrade_ws import topology

    if "detail" in payload and "detail-type" in payload:
        detail_type = detail_type or payload["detail-type"]
        source = payload.get("source")
        detail = payload["detail"]
    else:
        detail, source = payload, None
    sources = {s.detail_type: s.source for s in topology.SOURCES}
    if detail_type not in sources:
        raise SystemExit(f"unknown detail-type {detail_type!r}; one of: {', '.join(sources)}")
    return {
        "Source": source or sources[detail_type],
        "DetailType": detail_type,
        "Detail": json.dumps(detail),
        "EventBusName": bus,
    }


def _publish_payload(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            payload = json.load(handle)
        detail_type = args.detail_type
    else:
        if not args.detail_type or args.detail is None:
            raise SystemExit("give a detail-type and a JSON detail, or --file")
        detail_type = args.detail_type
        try:
            payload = json.loads(args.detail)
        except ValueError as error:
            raise SystemExit(f"the detail is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise SystemExit("the detail must be a JSON object")
    return detail_type, payload


def cmd_publish(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from quanttrade_ws.upstream import InvalidEvent, parse_upstream_event

    detail_type, payload = _publish_payload(args)
    deployed = bool(args.profile or args.aws or is_deployed(args))
    if deployed:
        session = aws_session(args)
        stack = deployed_stack(args, session)
        bus = args.bus or (stack.output("EventBusName") if stack else None)
        if bus is None:
            raise SystemExit("--profile/--aws alone name no stack: give --bus NAME, or --outputs/--stack")
    else:
        # moto accepts any keys; fixed ones keep a developer's real credentials out of local traffic.
        region = args.region or os.environ.get("AWS_REGION", DEFAULT_REGION)
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
        bus = args.bus or local_event_bus()
    entry = build_entry(detail_type, payload, bus)
    if not args.force:
        try:
            parse_upstream_event(
                {
                    "version": "0",
                    "id": "check",
                    "source": entry["Source"],
                    "detail-type": entry["DetailType"],
                    "account": "000000000000",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "region": session.region_name or DEFAULT_REGION,
                    "resources": [],
                    "detail": json.loads(entry["Detail"]),
                }
            )
        except InvalidEvent as error:
            raise SystemExit(f"fan-out would dead-letter this event ({error}); --force sends it anyway") from None

    endpoint = args.endpoint or (None if deployed else DEFAULT_AWS_ENDPOINT)
    try:
        client: Any = session.client("events", endpoint_url=endpoint)
        response = client.put_events(Entries=[entry])
    except ClientError as error:
        print(f"cannot publish to the bus {bus}: {_aws_error(error)}", file=sys.stderr)
        return 1
    except BotoCoreError as error:
        hint = "" if deployed else " (is `python -m local dev` running?)"
        print(f"cannot publish to the bus {bus}: {error}{hint}", file=sys.stderr)
        return 1
    result = response["Entries"][0]
    if response.get("FailedEntryCount"):
        print(f"refused: {result.get('ErrorCode')}: {result.get('ErrorMessage')}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "EventId": result["EventId"],
                "DetailType": entry["DetailType"],
                "Source": entry["Source"],
                "EventBusName": bus,
            }
        )
    )
    return 0


# ---------------------------------------------------------------------- listen

# What --count counts: the messages streams and rooms deliver, not replies, pongs or heartbeats.
DATA_MESSAGE_TYPES = frozenset(
    {"market_data", "prediction", "alert", "performance", "system_status", "market_regime", "room_message"}
)


def parse_stream(text: str) -> dict[str, Any]:
    """`market_data:AAPL` or `alerts` as a subscribe frame's stream spec."""
    stream_type, _, symbol = text.partition(":")
    spec: dict[str, Any] = {"stream_type": stream_type}
    if symbol and symbol != "*":
        spec["symbol"] = symbol
    return spec


def unpack(message: Any) -> list[Any]:
    """A server frame's messages: a `batch` carries several in payload.messages."""
    if isinstance(message, dict) and message.get("message_type") == "batch":
        inner = (message.get("payload") or {}).get("messages")
        if isinstance(inner, list):
            return [m for item in inner for m in unpack(item)]
    return [message]


def is_data_message(message: Any) -> bool:
    return isinstance(message, dict) and message.get("message_type") in DATA_MESSAGE_TYPES


def format_message(message: Any, pretty: bool) -> str:
    if not isinstance(message, dict):
        return json.dumps(message)
    if pretty:
        return json.dumps(message, indent=2, sort_keys=True)
    head = message.get("message_type", "?")
    where = message.get("stream") or message.get("room") or ""
    seq = f" #{message['seq']}" if message.get("seq") is not None else ""
    stamp = time.strftime("%H:%M:%S")
    return f"{stamp} {head:<14} {where}{seq} {json.dumps(message.get('payload', message), sort_keys=True)}"


def listen_target(args: argparse.Namespace) -> tuple[str, str]:
    """The WebSocket URL and the access token: the local stack's and a minted token, or a deployed stack's and
    --token/$QT_TOKEN."""
    stack = deployed_stack(args)
    if stack is None:
        _local_only_profile(args, "outputs (listening needs no AWS credentials)")
        return args.url or DEFAULT_WS_URL, args.token or _mint_listen_token(args.user)
    url = args.url or stack.output("WebSocketUrl")
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise SystemExit(
            f"listening to the deployed stack {stack.name} needs an access token: pass --token TOKEN or set "
            f"${TOKEN_ENV}, e.g. {TOKEN_ENV}=$(python -m local token --stack {stack.name}) when the stack verifies "
            "HS256 tokens with its JwtSecretArn key; otherwise a token from its identity provider."
        )
    return url, token


async def listen(args: argparse.Namespace) -> int:
    import websockets

    url, token = listen_target(args)
    separator = "&" if "?" in url else "?"
    try:
        connection = await websockets.connect(f"{url}{separator}token={token}", max_size=None, open_timeout=15)
    except websockets.InvalidStatus as error:
        print(f"handshake refused by {url}: HTTP {error.response.status_code}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as error:
        print(f"cannot connect to {url}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    received = 0
    wanted = args.count
    async with connection:
        await connection.send(json.dumps({"action": "hello", "request_id": "listen-hello"}))
        if args.stream:
            streams = [parse_stream(s) for s in args.stream]
            await connection.send(json.dumps({"action": "subscribe", "streams": streams, "request_id": "listen-sub"}))
        for room in args.room or []:
            await connection.send(json.dumps({"action": "joinRoom", "room": room, "request_id": f"listen-{room}"}))
        keepalive = asyncio.create_task(_keep_alive(connection))
        try:
            async with asyncio.timeout(args.seconds):
                async for frame in connection:
                    try:
                        decoded = json.loads(frame)
                    except ValueError:
                        print(frame, flush=True)
                        continue
                    for message in unpack(decoded):
                        print(format_message(message, args.pretty), flush=True)
                        if is_data_message(message):
                            received += 1
                            if wanted is not None and received >= wanted:
                                return 0
        except TimeoutError:
            if wanted is None:
                return 0
            print(f"{received} of {wanted} data messages within {args.seconds:g} s", file=sys.stderr)
            return 1
        except websockets.ConnectionClosed as closed:
            print(f"connection closed: {closed}", file=sys.stderr)
        finally:
            keepalive.cancel()
    if wanted is not None and received < wanted:
        print(f"connection closed after {received} of {wanted} data messages", file=sys.stderr)
        return 1
    return 0


async def _keep_alive(connection: Any) -> None:
    # API Gateway counts only client messages as activity; its idle timeout is 10 minutes.
    while True:
        await asyncio.sleep(240)
        await connection.send(json.dumps({"action": "ping"}))


def _mint_listen_token(user: str) -> str:
    from local.tokens import mint_token

    _quiet_development_warnings()
    return mint_token(_secret(), user)


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(listen(args))
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------- admin API: stats, connection, ...


def signed_request(method: str, url: str, credentials: Any, region: str, service: str = "execute-api") -> Any:
    """A urllib request signed with SigV4 (botocore's signer), as an IAM-authorised API Gateway route wants it.

    Everything botocore signs (host, x-amz-date, accept, the session token) is sent as signed; the headers urllib
    adds of its own (User-Agent, Connection) are outside the signature, which API Gateway allows."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, headers={"Accept": "application/json"})
    SigV4Auth(credentials, service, region).add_auth(request)
    return urllib.request.Request(url, headers=dict(request.headers.items()), method=method)


def signing_region(url: str, args: argparse.Namespace, session: Any) -> str:
    """--region, else the region in an execute-api host name, else the session's region."""
    if args.region:
        return str(args.region)
    match = _EXECUTE_API_HOST.search(urllib.parse.urlsplit(url).hostname or "")
    if match:
        return match.group(1)
    return str(session.region_name or DEFAULT_REGION)


def local_admin_request(args: argparse.Namespace, path: str) -> Any:
    """GET `path` of the local gateway, signed (SigV4, service execute-api) as the local stack's administrator:
    the local admin routes are IAM-authorised as the deployed ones are."""
    from local.signed_http import signed_request as signed_as_admin

    url = (args.url or DEFAULT_HTTP_URL).rstrip("/") + path
    return signed_as_admin("GET", url, region=args.region or os.environ.get("AWS_REGION", DEFAULT_REGION))


def admin_request(args: argparse.Namespace, path: str) -> Any:
    """GET `path` of the admin API: the local gateway's /admin routes signed as the local administrator, or a
    deployed stack's AdminApiUrl signed with SigV4 (service execute-api) with the profile's credentials."""
    from botocore.exceptions import BotoCoreError

    if not is_deployed(args):
        _local_only_profile(args, "admin API")
        return local_admin_request(args, ADMIN_PREFIX + path)
    if args.url:
        raise SystemExit("--url is the local gateway's; a deployed stack's admin API is its AdminApiUrl output")
    session = aws_session(args)
    stack = deployed_stack(args, session)
    assert stack is not None
    url = stack.output("AdminApiUrl").rstrip("/") + path
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except BotoCoreError as error:
        raise SystemExit(f"cannot load AWS credentials: {error}") from None
    if frozen is None or not frozen.access_key:
        whose = f" for the profile {args.profile}" if args.profile else ""
        raise SystemExit(f"no AWS credentials{whose}: the admin API is IAM-authorised, every request is SigV4-signed")
    return signed_request("GET", url, frozen, signing_region(url, args, session))


def fetch_json(request: Any, timeout: float, signed: bool) -> tuple[int, Any]:
    """(0, the decoded body) or (1, None) after saying on stderr what went wrong."""
    url = request.full_url
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            document = json.loads(body)
            detail = document.get("message") or document.get("Message") or body.decode(errors="replace")
        except (ValueError, AttributeError):
            detail = body[:200].decode(errors="replace")
        hint = ""
        if error.code == 403 and signed:
            hint = " (the credentials need execute-api:Invoke on the admin API, in the API's region)"
        print(f"GET {url}: HTTP {error.code} {error.reason}: {detail}{hint}", file=sys.stderr)
        return 1, None
    except OSError as error:
        reason = getattr(error, "reason", error)
        hint = "" if signed else " (is `python -m local dev` running?)"
        print(f"GET {url}: {reason}{hint}", file=sys.stderr)
        return 1, None
    try:
        return 0, json.loads(raw)
    except ValueError:
        print(f"GET {url}: the answer is not JSON: {raw[:200]!r}", file=sys.stderr)
        return 1, None


def _print_admin(args: argparse.Namespace, path: str) -> int:
    status, body = fetch_json(admin_request(args, path), args.timeout, signed=is_deployed(args))
    if status == 0:
        print(json.dumps(body, indent=2, sort_keys=True), flush=True)
    return status


def cmd_stats(args: argparse.Namespace) -> int:
    if args.local and is_deployed(args):
        raise SystemExit("--local reads the local stack's counters; on AWS they are CloudWatch metrics")
    status = _print_admin(args, "/stats")
    if status or not args.local:
        return status
    status, body = fetch_json(local_admin_request(args, "/local/stats"), args.timeout, signed=False)
    if status == 0:
        print(json.dumps(body, indent=2, sort_keys=True), flush=True)
    return status


def cmd_connection(args: argparse.Namespace) -> int:
    return _print_admin(args, f"/connections/{_segment(args.connection_id)}")


def cmd_subscriptions(args: argparse.Namespace) -> int:
    return _print_admin(args, f"/connections/{_segment(args.connection_id)}/subscriptions")


def cmd_members(args: argparse.Namespace) -> int:
    return _print_admin(args, f"/rooms/{_segment(args.room)}/members")


def _segment(value: str) -> str:
    # Connection ids end in '=' on AWS; room names may hold ':'.
    return urllib.parse.quote(value, safe="")


# ---------------------------------------------------------------------- parser


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
        return value

    return parse


def fault_rates(text: str) -> dict[str, float]:
    """`dynamodb=0.05,management=0.05,sqs=0.02` -> {"dynamodb": 0.05, ...}, each a share within [0, 1]."""
    from local.stack import FAULT_TARGETS  # only when faults are asked for: it imports the whole stack

    rates: dict[str, float] = {}
    for pair in text.split(","):
        name, separator, value = pair.strip().partition("=")
        if not separator or not name:
            raise argparse.ArgumentTypeError(f"expected name=rate pairs like dynamodb=0.05, got {pair.strip()!r}")
        if name not in FAULT_TARGETS:
            raise argparse.ArgumentTypeError(f"faults go to {', '.join(FAULT_TARGETS)}, not {name!r}")
        try:
            rate = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise argparse.ArgumentTypeError(f"{name}: a rate is a share of calls within [0, 1], not {value}")
        rates[name] = rate
    return rates


def _add_deployed_options(parser: argparse.ArgumentParser, credentials: str) -> None:
    group = parser.add_argument_group(
        "deployed stack", "Without these the local stack is the target; with --outputs or --stack, a deployed one."
    )
    group.add_argument(
        "--outputs",
        metavar="FILE",
        help="the JSON that `cdk deploy --outputs-file FILE` writes; if it holds several stacks, pick one with --stack",
    )
    group.add_argument(
        "--stack",
        metavar="NAME",
        help="the deployed stack: picked from --outputs, or its outputs read with CloudFormation DescribeStacks",
    )
    group.add_argument("--profile", help=f"AWS profile {credentials} (default: the default credential chain)")
    group.add_argument("--region", help="AWS region (default: $AWS_REGION, else the profile's region)")


EPILOG = """\
Local or deployed: publish, listen, stats, connection, subscriptions and members talk to the local stack
(`python -m local dev`) unless given a deployed stack's outputs:

  cdk deploy --outputs-file outputs.json
  python -m local publish --outputs outputs.json --profile prod --file events/eventbridge/alert.json
  QT_TOKEN=... python -m local listen --outputs outputs.json --stream market_data:AAPL --count 5
  python -m local stats --stack QuantTrade-prod --profile prod --region eu-west-1

The admin API is IAM-authorised: its requests are signed (SigV4, service execute-api) with the profile's
credentials. `token --stack NAME` (or --outputs FILE) signs a test token with a deployed stack's HS256 key,
read from the secret its JwtSecretArn output names (secretsmanager:GetSecretValue).
"""


def build_parser() -> argparse.ArgumentParser:
    from quanttrade_ws.auth import ALL_PERMISSIONS, CLIENT_TYPES, SUBSCRIPTION_LEVELS
    from quanttrade_ws.config import DEFAULT_AUDIENCE, DEFAULT_ISSUER

    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="The QuantTrade local stack: API Gateway emulator + Lambda handlers + moto, on one machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run the whole backend (with the market simulator)")
    dev.add_argument("--host", default="127.0.0.1", help="interface for the gateway and moto (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8081, help="gateway port: WebSocket, Management API, dashboard")
    dev.add_argument("--moto-port", type=int, default=4566, help="moto server port (DynamoDB, SQS, EventBridge)")
    dev.add_argument(
        "--moto-mode",
        choices=("subprocess", "thread"),
        default="subprocess",
        help="run moto in a child process (default: keeps it off the gateway's GIL) or a thread",
    )
    dev.add_argument("--no-simulator", action="store_true", help="do not publish simulated market events")
    dev.add_argument("--rate", type=float, default=6.0, help="simulated market data ticks per second (default 6)")
    dev.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a client message (600)")
    dev.add_argument(
        "--max-connection-duration", type=float, default=7200.0, help="seconds before any connection is closed (7200)"
    )
    dev.add_argument("--management-rate", type=float, default=10_000.0, help="Management API calls per second")
    dev.add_argument(
        "--faults",
        type=fault_rates,
        default={},
        metavar="NAME=RATE,...",
        help="answer this share of calls with AWS's own errors: dynamodb and sqs (the functions' calls: throttling, "
        "500s, cancelled transactions), management (Management API: 429 LimitExceeded or 500); "
        "e.g. dynamodb=0.05,management=0.05,sqs=0.02",
    )
    dev.add_argument("--fault-seed", type=int, default=None, help="seed for --faults, to repeat a run's faults")
    dev.add_argument(
        "--ttl-sweep",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="delete items whose DynamoDB TTL has passed this often (60; 0: never)",
    )
    dev.add_argument("--log-level", default="INFO", help="log level of the local stack's components (INFO)")
    dev.add_argument(
        "--handler-log-level",
        default="WARNING",
        help="show the functions' log lines from this level up (WARNING); they log at the template's level",
    )
    dev.set_defaults(func=cmd_dev)

    token = commands.add_parser(
        "token",
        help="mint an HS256 access token: the local stack's key, or a deployed stack's (--stack/--outputs)",
        description="Mint an HS256 access token for testing. Locally with $QT_JWT_SECRET or the running stack's "
        f"key; with --outputs/--stack with the deployed stack's key, the secret its {SECRET_OUTPUT} output names. "
        "A stack that verifies RS256 tokens (jwks_url, cognito) has no such key: its tokens come from the "
        "identity provider.",
    )
    token.add_argument("--user", default="dev-user", help="the token's subject")
    token.add_argument(
        "--permissions", nargs="*", metavar="PERMISSION", help=f"default: all ({', '.join(ALL_PERMISSIONS)})"
    )
    token.add_argument("--level", default="premium", choices=SUBSCRIPTION_LEVELS, help="subscription level")
    token.add_argument("--client-type", default="web", choices=CLIENT_TYPES)
    token.add_argument("--expires", type=int, default=3600, help="lifetime in seconds (3600)")
    token.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"iss: settings.jwt_issuer ({DEFAULT_ISSUER})")
    token.add_argument("--audience", default=DEFAULT_AUDIENCE, help=f"aud: settings.jwt_audience ({DEFAULT_AUDIENCE})")
    _add_deployed_options(token, "whose credentials read the signing key")
    token.set_defaults(func=cmd_token)

    publish = commands.add_parser(
        "publish",
        help="put one upstream event on the event bus (local moto, or a deployed stack's)",
        description="Put one upstream event on the event bus, checked first as fan-out would parse it. Locally "
        f"on moto's bus at {DEFAULT_AWS_ENDPOINT}; with --outputs/--stack on the deployed stack's EventBusName, "
        "with only --profile or --aws, on the bus --bus of that account.",
    )
    publish.add_argument("detail_type", nargs="?", help="MarketData, Prediction, Alert, Performance, ...")
    publish.add_argument("detail", nargs="?", help="the event's detail as JSON")
    publish.add_argument("--file", help="a JSON file: a whole EventBridge event or just its detail")
    publish.add_argument(
        "--endpoint",
        help=f"EventBridge endpoint (default {DEFAULT_AWS_ENDPOINT}; AWS's own for a deployed stack or --aws)",
    )
    publish.add_argument("--aws", action="store_true", help="publish to AWS with the default credential chain")
    publish.add_argument(
        "--bus",
        help="event bus name (default: the EventBusName output of the deployed stack, or of the running local one)",
    )
    publish.add_argument("--force", action="store_true", help="send even if the event would not validate")
    _add_deployed_options(publish, "whose credentials put the event")
    publish.set_defaults(func=cmd_publish)

    listen_ = commands.add_parser(
        "listen",
        help="connect, subscribe and print messages as they arrive",
        description="Connect, say hello, subscribe to streams and join rooms, and print every message. Locally a "
        f"development token is minted; a deployed stack needs --token or ${TOKEN_ENV}.",
    )
    listen_.add_argument(
        "--stream", action="append", help="stream to subscribe, e.g. market_data:AAPL, alerts (repeatable)"
    )
    listen_.add_argument("--room", action="append", help="room to join (repeatable)")
    listen_.add_argument(
        "--url", help=f"WebSocket URL (default {DEFAULT_WS_URL}, or the deployed stack's WebSocketUrl output)"
    )
    listen_.add_argument(
        "--token",
        help=f"access token (local default: a development token for --user; a deployed stack: ${TOKEN_ENV})",
    )
    listen_.add_argument("--user", default="listener", help="user of the minted token (default listener)")
    listen_.add_argument("--pretty", action="store_true", help="print whole messages as indented JSON")
    listen_.add_argument(
        "--count",
        type=_positive(int),
        metavar="N",
        help="exit after N data messages (stream and room messages, not replies); exit 1 if the connection closes "
        "or --seconds runs out first",
    )
    listen_.add_argument(
        "--seconds",
        type=_positive(float),
        metavar="S",
        help="stop listening after S seconds (exit 0; with --count, a deadline)",
    )
    _add_deployed_options(listen_, "for --stack's DescribeStacks (listening itself needs no AWS credentials)")
    listen_.set_defaults(func=cmd_listen)

    def admin_command(name: str, help_text: str, route: str) -> argparse.ArgumentParser:
        command = commands.add_parser(
            name,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}: GET {route}. Locally {DEFAULT_HTTP_URL}"
            f"{ADMIN_PREFIX}{route}; with --outputs/--stack the deployed AdminApiUrl{route}, signed with SigV4.",
        )
        command.add_argument(
            "--url", help=f"the local gateway's HTTP URL (default {DEFAULT_HTTP_URL}); the admin API is under /admin"
        )
        command.add_argument("--timeout", type=_positive(float), default=10.0, help="seconds to wait (10)")
        _add_deployed_options(command, "whose credentials sign the request (it needs execute-api:Invoke)")
        return command

    stats = admin_command("stats", "the admin API's statistics", "/stats")
    stats.add_argument("--local", action="store_true", help="also the local stack's function and pump counters")
    stats.set_defaults(func=cmd_stats)
    connection = admin_command("connection", "one connection's user, rooms and counts", "/connections/{id}")
    connection.add_argument("connection_id", help="the connection id (a client's hello reply: payload.client_id)")
    connection.set_defaults(func=cmd_connection)
    subscriptions = admin_command("subscriptions", "one connection's subscriptions", "/connections/{id}/subscriptions")
    subscriptions.add_argument("connection_id", help="the connection id")
    subscriptions.set_defaults(func=cmd_subscriptions)
    members = admin_command("members", "a room's members", "/rooms/{room}/members")
    members.add_argument("room", help="the room's name")
    members.set_defaults(func=cmd_members)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
