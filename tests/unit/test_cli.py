"""The command line's deployed-stack targeting: arguments, outputs files, DescribeStacks, SigV4 and listen's stop rules.

No local stack here: a tiny http.server on 127.0.0.1 stands in for the admin API (and records what it was sent),
moto's in-process mock stands in for CloudFormation and EventBridge, a tiny websockets server for the WebSocket API.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.cli import admin, deployed, listen, local_target, main
from local.principals import ADMIN_CREDENTIALS
from local.sigv4 import verify

ACCESS_KEY = "AKIDEXAMPLEOPS"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FQoGZXIvYXdzEXAMPLEsessiontoken"
FROZEN = datetime.datetime(2026, 3, 2, 14, 30, 0, tzinfo=datetime.UTC)
AMZ_DATE = "20260302T143000Z"
AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/execute-api/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


@pytest.fixture(autouse=True)
def aws_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No developer credentials, profiles, regions or instance metadata reach these tests."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "QT_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "config").write_text("")
    (aws / "credentials").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return aws


@pytest.fixture
def ops_profile(aws_isolation: Path) -> str:
    """A profile `ops` with session credentials and a region, as `aws configure` would write it."""
    (aws_isolation / "credentials").write_text(
        f"[ops]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        f"aws_session_token = {SESSION_TOKEN}\n"
    )
    (aws_isolation / "config").write_text("[profile ops]\nregion = eu-west-1\n")
    return "ops"


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> datetime.datetime:
    import botocore.auth

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN)
    return FROZEN


def write_outputs(path: Path, stacks: dict[str, dict[str, str]]) -> str:
    path.write_text(json.dumps(stacks, indent=2))
    return str(path)


def stack_outputs(
    admin_url: str = "https://abc123.execute-api.eu-west-1.amazonaws.com/", **extra: str
) -> dict[str, str]:
    return {
        "WebSocketUrl": "wss://ws123.execute-api.eu-west-1.amazonaws.com/prod",
        "ManagementApiEndpoint": "https://ws123.execute-api.eu-west-1.amazonaws.com/prod",
        "EventBusName": "quanttrade-prod",
        "AdminApiUrl": admin_url,
        **extra,
    }


# ---------------------------------------------------------------- a stand-in admin API


class Captured:
    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers  # names lower-cased


class AdminServer:
    """An HTTP server on 127.0.0.1 that records each request and answers with `status` and `body`."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.status = 200
        self.body: Any = {"connections": 3, "rooms": 1, "subscriptions": 5}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                server.requests.append(Captured("GET", self.path, headers))
                data = json.dumps(server.body).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def last(self) -> Captured:
        assert self.requests, "the admin API got no request"
        return self.requests[-1]


@pytest.fixture
def admin_server() -> Iterator[AdminServer]:
    server = AdminServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(timeout=5)


# ---------------------------------------------------------------- argument parsing


def parse(*argv: str) -> Any:
    return main.build_parser().parse_args(list(argv))


def test_local_defaults_are_unchanged() -> None:
    publish = parse("publish", "MarketData", "{}")
    assert (publish.outputs, publish.stack, publish.profile, publish.region) == (None, None, None, None)
    assert publish.bus is None and publish.endpoint is None and not publish.aws
    assert not deployed.is_deployed(publish)
    listen_args = parse("listen", "--stream", "market_data:AAPL")
    assert listen_args.url is None and listen_args.token is None and listen_args.user == "listener"
    assert listen_args.count is None and listen_args.seconds is None
    stats = parse("stats")
    assert stats.url is None and not stats.local and stats.timeout == 10.0
    assert stats.func is admin.cmd_stats


def test_deployed_options_parse_on_every_targeting_command() -> None:
    for command in (
        ["publish", "Alert", "{}"],
        ["listen"],
        ["token"],
        ["stats"],
        ["connection", "abc="],
        ["subscriptions", "abc="],
        ["members", "desk-eu"],
    ):
        args = parse(
            *command, "--outputs", "out.json", "--stack", "QuantTrade", "--profile", "ops", "--region", "eu-west-1"
        )
        assert (args.outputs, args.stack, args.profile, args.region) == ("out.json", "QuantTrade", "ops", "eu-west-1")
        assert deployed.is_deployed(args)
    assert deployed.is_deployed(parse("stats", "--stack", "QuantTrade"))


def test_listen_stop_options_and_admin_sub_commands() -> None:
    args = parse("listen", "--stream", "market_data:AAPL", "--stream", "alerts", "--room", "desk-eu", "--count", "3")
    assert args.stream == ["market_data:AAPL", "alerts"] and args.room == ["desk-eu"] and args.count == 3
    assert parse("listen", "--seconds", "2.5").seconds == 2.5
    assert parse("connection", "abc=").connection_id == "abc="
    assert parse("connection", "abc=").func is admin.cmd_connection
    assert parse("subscriptions", "abc=").func is admin.cmd_subscriptions
    assert parse("members", "desk:eu").room == "desk:eu"
    assert parse("members", "desk:eu").func is admin.cmd_members


@pytest.mark.parametrize(
    "argv", [["listen", "--count", "0"], ["listen", "--count", "x"], ["listen", "--seconds", "-1"]]
)
def test_listen_refuses_counts_and_durations_that_are_not_positive(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert "listen: error: argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["dev", "--ttl-sweep", "-1"], ["dev", "--environment-idle", "-5"]])
def test_dev_refuses_negative_periods(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # A negative sweep period would sweep moto's tables in a loop without pausing.
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err


def test_dev_periods_default_to_the_stack_s_and_take_zero_for_never() -> None:
    from local.moto_dynamodb import DEFAULT_TTL_SWEEP_SECONDS

    assert parse("dev").ttl_sweep == DEFAULT_TTL_SWEEP_SECONDS
    assert parse("dev", "--ttl-sweep", "0").ttl_sweep == 0


def test_help_explains_local_and_deployed_targets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    top = capsys.readouterr().out
    assert "--outputs-file" in top and "SigV4" in top and "`token --stack NAME`" in top and "JwtSecretArn" in top
    with pytest.raises(SystemExit):
        parse("listen", "--help")
    listen_help = capsys.readouterr().out
    assert "--outputs FILE" in listen_help and "$QT_TOKEN" in listen_help and "--count N" in listen_help
    with pytest.raises(SystemExit):
        parse("stats", "--help")
    assert "execute-api:Invoke" in capsys.readouterr().out


# ---------------------------------------------------------------- outputs files


def test_an_outputs_file_with_one_stack_needs_no_stack_name(tmp_path: Path) -> None:
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs()})
    stack = deployed.read_outputs_file(path)
    assert stack.name == "QuantTrade" and stack.origin == path
    assert stack.output("EventBusName") == "quanttrade-prod"
    assert stack.output("WebSocketUrl").startswith("wss://")
    assert deployed.read_outputs_file(path, "QuantTrade") == stack


def test_an_outputs_file_with_several_stacks_is_picked_from_by_stack_name(tmp_path: Path) -> None:
    path = write_outputs(
        tmp_path / "outputs.json",
        {"QuantTrade-dev": stack_outputs(EventBusName="qt-dev"), "QuantTrade-prod": stack_outputs()},
    )
    assert deployed.read_outputs_file(path, "QuantTrade-dev").output("EventBusName") == "qt-dev"
    with pytest.raises(
        SystemExit, match=r"several stacks \(QuantTrade-dev, QuantTrade-prod\): choose one with --stack"
    ):
        deployed.read_outputs_file(path)
    with pytest.raises(SystemExit, match="has no stack 'QuantTrade'; it holds: QuantTrade-dev, QuantTrade-prod"):
        deployed.read_outputs_file(path, "QuantTrade")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('["QuantTrade"]', "is not what `cdk deploy --outputs-file` writes"),
        ("{}", "is not what `cdk deploy --outputs-file` writes"),
        ('{"WebSocketUrl": "wss://flat"}', "is not what `cdk deploy --outputs-file` writes"),
    ],
)
def test_malformed_outputs_files_are_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=re.escape(message)):
        deployed.read_outputs_file(str(path))


def test_a_missing_outputs_file_or_output_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"cannot read the outputs file .*nowhere.json"):
        deployed.read_outputs_file(str(tmp_path / "nowhere.json"))
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": {"WebSocketUrl": "wss://x"}})
    with pytest.raises(SystemExit, match=r"stack QuantTrade has no AdminApiUrl output in .* \(it has: WebSocketUrl\)"):
        deployed.read_outputs_file(path).output("AdminApiUrl")


# ---------------------------------------------------------------- DescribeStacks (moto)


@pytest.fixture
def mocked_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def create_stack(name: str, outputs: dict[str, str], region: str = "eu-west-1") -> None:
    import boto3

    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name=region).create_stack(StackName=name, TemplateBody=json.dumps(template))


def test_stack_reads_the_outputs_with_describe_stacks(mocked_aws: None) -> None:
    create_stack("QuantTrade", stack_outputs())
    args = parse("listen", "--stack", "QuantTrade", "--region", "eu-west-1", "--token", "T")
    stack = deployed.deployed_stack(args)
    assert stack is not None
    assert stack.outputs == stack_outputs()
    assert stack.origin == "CloudFormation (eu-west-1)"
    assert listen.listen_target(args) == (stack_outputs()["WebSocketUrl"], "T")


def test_an_unknown_stack_is_a_clear_error(mocked_aws: None) -> None:
    args = parse("stats", "--stack", "Nope", "--region", "eu-west-1")
    with pytest.raises(SystemExit, match=r"cannot describe the stack 'Nope': ValidationError: .*does not exist"):
        deployed.deployed_stack(args)


def test_an_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match=r"could not be found.*aws configure list-profiles"):
        deployed.deployed_stack(parse("stats", "--stack", "QuantTrade", "--profile", "nobody"))


def test_stats_with_stack_signs_a_get_of_the_described_admin_url(
    mocked_aws: None, admin_server: AdminServer, capsys: pytest.CaptureFixture[str]
) -> None:
    create_stack("QuantTrade", stack_outputs(admin_url=admin_server.url + "/"))
    assert main.main(["stats", "--stack", "QuantTrade", "--region", "eu-west-1"]) == 0
    assert json.loads(capsys.readouterr().out) == admin_server.body
    assert admin_server.last.path == "/stats"
    match = AUTHORIZATION.match(admin_server.last.headers["authorization"])
    assert match and match["key"] == os.environ["AWS_ACCESS_KEY_ID"] and match["region"] == "eu-west-1"


def test_publish_with_outputs_puts_on_the_stacks_bus(mocked_aws: None, tmp_path: Path, capsys: Any) -> None:
    import boto3

    boto3.client("events", region_name="eu-west-1").create_event_bus(Name="quanttrade-prod")
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs()})
    detail = json.dumps({"service": "order-router", "status": "degraded", "message": "slow fills"})
    assert main.main(["publish", "SystemStatus", detail, "--outputs", path, "--region", "eu-west-1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["EventBusName"] == "quanttrade-prod" and printed["DetailType"] == "SystemStatus"
    assert printed["EventId"]

    # --bus still wins; a bus the account does not have is a plain error, not a traceback.
    assert (
        main.main(["publish", "SystemStatus", detail, "--outputs", path, "--bus", "nope", "--region", "eu-west-1"]) == 1
    )
    assert "cannot publish to the bus nope: ResourceNotFoundException" in capsys.readouterr().err


# ---------------------------------------------------------------- SigV4 signing of the admin API


# ---------------------------------------------------------------- token: a deployed stack's HS256 key

STACK_KEY = "deployed-stack-signing-key-0123456789abcdef-0123456789abcdef"


def create_signing_secret(value: str = STACK_KEY, region: str = "eu-west-1") -> str:
    import boto3

    client = boto3.client("secretsmanager", region_name=region)
    return str(client.create_secret(Name="QuantTradeStack-TokenKeyJwtSigningKey", SecretString=value)["ARN"])


def verified(token: str, key: str, **settings: Any) -> Any:
    """The identity the stack's authorizer would see: the shared package's verifier with the stack's key."""
    from quanttrade_ws.auth import TokenVerifier
    from quanttrade_ws.config import Settings

    return TokenVerifier(Settings(jwt_secret=key, session_secret="another-key-for-session-tokens", **settings)).verify(
        token
    )


def test_token_with_outputs_signs_with_the_secret_the_stack_names(
    mocked_aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a deployed stack's outputs file whose JwtSecretArn names a secret (moto's)
    arn = create_signing_secret()
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs(JwtSecretArn=arn)})
    # WHEN a token is minted from it
    argv = ["token", "--outputs", path, "--user", "alice", "--permissions", "read:alerts", "--level", "basic"]
    assert main.main(argv) == 0
    token = capsys.readouterr().out.strip()
    # THEN the stack's verifier accepts it, with what was asked for
    identity = verified(token, STACK_KEY)
    assert (identity.user_id, identity.permissions, identity.subscription_level) == (
        "alice",
        frozenset({"read:alerts"}),
        "basic",
    )


def test_token_with_stack_reads_the_outputs_through_describe_stacks(
    mocked_aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a stack in CloudFormation with the JwtSecretArn output
    create_stack("QuantTrade", stack_outputs(JwtSecretArn=create_signing_secret()))
    # WHEN a token is minted for it, for an issuer and audience the operator configured
    argv = ["token", "--stack", "QuantTrade", "--region", "eu-west-1", "--issuer", "corp-auth", "--audience", "ws"]
    assert main.main(argv) == 0
    token = capsys.readouterr().out.strip()
    # THEN a verifier with those settings accepts it, and one with the defaults does not
    assert verified(token, STACK_KEY, jwt_issuer="corp-auth", jwt_audience="ws").user_id == "dev-user"
    from quanttrade_ws.auth import AuthError

    with pytest.raises(AuthError):
        verified(token, STACK_KEY)


def test_token_for_a_stack_without_an_hs256_key_says_where_tokens_come_from(tmp_path: Path) -> None:
    cognito = stack_outputs(UserPoolId="eu-west-1_AbCdEf123", UserPoolClientId="client123")
    path = write_outputs(tmp_path / "outputs.json", {"Cognito": cognito, "Oidc": stack_outputs()})
    with pytest.raises(SystemExit, match=r"Cognito user pool eu-west-1_AbCdEf123 \(app client client123\)"):
        main.main(["token", "--outputs", path, "--stack", "Cognito"])
    with pytest.raises(SystemExit, match=r"stack Oidc has no JwtSecretArn output in .*outputs.json \(it has: Admin"):
        main.main(["token", "--outputs", path, "--stack", "Oidc"])


def test_token_says_why_the_key_cannot_be_read(mocked_aws: None, tmp_path: Path) -> None:
    # GIVEN outputs naming a secret that is not there (deleted, or another account's)
    missing = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gone-AbCdEf"
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs(JwtSecretArn=missing)})
    with pytest.raises(SystemExit, match=r"cannot read the signing key .*gone-AbCdEf: ResourceNotFoundException"):
        main.main(["token", "--outputs", path])
    bad = write_outputs(tmp_path / "bad.json", {"QuantTrade": stack_outputs(JwtSecretArn="not-an-arn")})
    with pytest.raises(SystemExit, match=r"no secret ARN: 'not-an-arn'"):
        main.main(["token", "--outputs", bad])


def test_token_with_a_profile_but_no_stack_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"--profile is for a deployed stack's signing key"):
        main.main(["token", "--profile", "ops"])


def independent_sigv4(captured: Captured, secret: str, region: str, service: str = "execute-api") -> str:
    """The signature of a request as received, computed from the SigV4 specification without botocore."""
    match = AUTHORIZATION.match(captured.headers["authorization"])
    assert match
    signed = match["signed"].split(";")
    path, _, query = captured.path.partition("?")
    # Everything but S3 encodes each path segment twice: the received (once-encoded) path is encoded again.
    canonical_uri = urllib.parse.quote(path, safe="/~")
    canonical_query = "&".join(sorted(query.split("&"))) if query else ""
    canonical_headers = "".join(f"{name}:{' '.join(captured.headers[name].split())}\n" for name in signed)
    canonical_request = "\n".join(
        [
            captured.method,
            canonical_uri,
            canonical_query,
            canonical_headers,
            ";".join(signed),
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    amz_date = captured.headers["x-amz-date"]
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def botocore_signature(captured: Captured, region: str) -> str:
    """What botocore's SigV4Auth writes for the request the server received, at the same (frozen) time."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = AUTHORIZATION.match(captured.headers["authorization"])
    assert match
    headers = {name: captured.headers[name] for name in match["signed"].split(";")}
    request = AWSRequest(
        method=captured.method, url=f"http://{captured.headers['host']}{captured.path}", headers=headers
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "execute-api", region).add_auth(request)
    return str(request.headers["Authorization"])


def test_stats_signs_with_the_profiles_credentials_as_botocore_would(
    tmp_path: Path,
    ops_profile: str,
    frozen_clock: datetime.datetime,
    admin_server: AdminServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs(admin_url=admin_server.url + "/")})
    assert main.main(["stats", "--outputs", path, "--profile", ops_profile]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == admin_server.body
    assert out.startswith('{\n  "connections": 3,')  # indented and sorted

    captured = admin_server.last
    assert (captured.method, captured.path) == ("GET", "/stats")
    assert captured.headers["x-amz-date"] == AMZ_DATE
    assert captured.headers["x-amz-security-token"] == SESSION_TOKEN
    match = AUTHORIZATION.match(captured.headers["authorization"])
    assert match, captured.headers["authorization"]
    # 127.0.0.1 names no region: the profile's (eu-west-1) is the signing region.
    assert (match["key"], match["date"], match["region"]) == (ACCESS_KEY, "20260302", "eu-west-1")
    assert match["signed"] == "accept;host;x-amz-date;x-amz-security-token"
    assert captured.headers["host"] == admin_server.url.removeprefix("http://")
    assert captured.headers["authorization"] == botocore_signature(captured, "eu-west-1")
    assert match["signature"] == independent_sigv4(captured, SECRET_KEY, "eu-west-1")


def test_path_parameters_are_encoded_and_signed_as_api_gateway_checks_them(
    tmp_path: Path,
    ops_profile: str,
    frozen_clock: datetime.datetime,
    admin_server: AdminServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs(admin_url=admin_server.url)})
    common = ["--outputs", path, "--profile", ops_profile, "--region", "us-west-2"]
    admin_server.body = {"connection_id": "Zx9-abc=", "subscriptions": []}
    assert main.main(["subscriptions", "Zx9-abc=", *common]) == 0
    assert admin_server.last.path == "/connections/Zx9-abc%3D/subscriptions"
    assert json.loads(capsys.readouterr().out) == admin_server.body
    assert main.main(["connection", "Zx9-abc=", *common]) == 0
    assert admin_server.last.path == "/connections/Zx9-abc%3D"
    assert main.main(["members", "desk:eu", *common]) == 0
    captured = admin_server.last
    assert captured.path == "/rooms/desk%3Aeu/members"
    match = AUTHORIZATION.match(captured.headers["authorization"])
    assert match and match["region"] == "us-west-2"  # --region wins over the profile's
    assert captured.headers["authorization"] == botocore_signature(captured, "us-west-2")
    assert match["signature"] == independent_sigv4(captured, SECRET_KEY, "us-west-2")


def test_the_signing_region_comes_from_region_then_the_execute_api_host_then_the_session() -> None:
    class Session:
        region_name = "sa-east-1"

    url = "https://abc123.execute-api.ap-southeast-2.amazonaws.com/stats"
    assert admin.signing_region(url, parse("stats"), Session()) == "ap-southeast-2"
    assert admin.signing_region(url, parse("stats", "--region", "eu-west-1"), Session()) == "eu-west-1"
    assert admin.signing_region("https://admin.example.com/stats", parse("stats"), Session()) == "sa-east-1"
    Session.region_name = None  # type: ignore[assignment]
    assert admin.signing_region("https://admin.example.com/stats", parse("stats"), Session()) == "us-east-1"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, {"message": "Forbidden"}, "HTTP 403 Forbidden: Forbidden (the credentials need execute-api:Invoke"),
        (404, {"message": "no connection gone="}, "HTTP 404 Not Found: no connection gone="),
        (500, {"message": "Internal Server Error"}, "HTTP 500 Internal Server Error: Internal Server Error"),
    ],
)
def test_a_non_2xx_answer_is_a_clear_error_and_a_non_zero_exit(
    tmp_path: Path,
    ops_profile: str,
    admin_server: AdminServer,
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: dict[str, str],
    expected: str,
) -> None:
    admin_server.status, admin_server.body = status, body
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs(admin_url=admin_server.url)})
    assert main.main(["connection", "gone=", "--outputs", path, "--profile", ops_profile]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"GET {admin_server.url}/connections/gone%3D: {expected}" in captured.err


def test_local_admin_requests_are_signed_as_the_local_administrator(
    admin_server: AdminServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a shell set up for a deployed stage in another region
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    # WHEN the CLI reads the local admin API (IAM-authorised, as the deployed one is)
    assert main.main(["stats", "--url", admin_server.url]) == 0
    # THEN the request carries a SigV4 signature (service execute-api) that verifies with the local admin's keys
    assert admin_server.last.path == "/admin/stats"
    headers = admin_server.last.headers
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    # (in the local stack's region, not $AWS_REGION's: the stack would refuse that scope)
    signer = verify(
        method="GET",
        path="/admin/stats",
        query="",
        headers=headers,
        body=b"",
        lookup={ADMIN_CREDENTIALS.access_key_id: ADMIN_CREDENTIALS}.get,
        service="execute-api",
        region="us-east-1",
    )
    assert signer.access_key_id == "testing"
    assert json.loads(capsys.readouterr().out) == admin_server.body
    assert main.main(["members", "desk-eu", "--url", admin_server.url]) == 0
    assert admin_server.last.path == "/admin/rooms/desk-eu/members"


def test_admin_commands_refuse_mixed_or_incomplete_targets(tmp_path: Path, admin_server: AdminServer) -> None:
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs(admin_url=admin_server.url)})
    with pytest.raises(SystemExit, match="--profile is for a deployed stack's admin API: give --outputs FILE"):
        main.main(["stats", "--profile", "ops"])
    with pytest.raises(SystemExit, match="--url is the local gateway's"):
        main.main(["stats", "--outputs", path, "--url", admin_server.url])
    with pytest.raises(SystemExit, match="--local reads the local stack's counters"):
        main.main(["stats", "--outputs", path, "--local"])
    with pytest.raises(SystemExit, match="no AWS credentials: the admin API is IAM-authorised"):
        main.main(["stats", "--outputs", path])
    assert admin_server.requests == []


# ---------------------------------------------------------------- listen: target and stop rules


def test_listening_to_a_deployed_stack_needs_a_token_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_outputs(tmp_path / "outputs.json", {"QuantTrade": stack_outputs()})
    with pytest.raises(SystemExit, match=r"needs an access token: pass --token TOKEN or set \$QT_TOKEN") as refused:
        listen.listen_target(parse("listen", "--outputs", path))
    assert "QT_TOKEN=$(python -m local token --stack QuantTrade)" in str(refused.value)
    wss = stack_outputs()["WebSocketUrl"]
    assert listen.listen_target(parse("listen", "--outputs", path, "--token", "T1")) == (wss, "T1")
    monkeypatch.setenv("QT_TOKEN", "T2")
    assert listen.listen_target(parse("listen", "--outputs", path)) == (wss, "T2")
    assert listen.listen_target(parse("listen", "--outputs", path, "--url", "wss://ws.example.com")) == (
        "wss://ws.example.com",
        "T2",
    )


def test_listening_locally_mints_a_token_and_ignores_qt_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import jwt

    secret = "unit-secret-of-at-least-thirty-two-bytes"
    monkeypatch.setenv("QT_JWT_SECRET", secret)
    monkeypatch.setenv("QT_TOKEN", "a-deployed-stacks-token")
    url, token = listen.listen_target(parse("listen", "--user", "bob"))
    assert url == local_target.DEFAULT_WS_URL
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="quanttrade-websocket")
    assert claims["sub"] == "bob"
    with pytest.raises(SystemExit, match="--profile is for a deployed stack"):
        listen.listen_target(parse("listen", "--profile", "ops"))


class FakeWebSocketApi:
    """A websockets server that records the client's frames and plays `script(send)` after the hello."""

    def __init__(self, script: Callable[[Any], Any]) -> None:
        self.script = script
        self.frames: list[dict[str, Any]] = []
        self.paths: list[str] = []

    async def handler(self, connection: Any) -> None:
        self.paths.append(connection.request.path)
        async for frame in connection:
            message = json.loads(frame)
            self.frames.append(message)
            if message.get("action") == "subscribe":
                reply = {"message_type": "subscribe", "request_id": message["request_id"], "payload": {}}
                await connection.send(json.dumps(reply))
                await self.script(connection)


def tick(seq: int) -> dict[str, Any]:
    return {"message_type": "market_data", "stream": "market_data:AAPL", "seq": seq, "payload": {"price": 100 + seq}}


async def run_listen(api: FakeWebSocketApi, *extra: str) -> int:
    from websockets.asyncio.server import serve

    async with serve(api.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        argv = ["listen", "--url", f"ws://127.0.0.1:{port}/", "--token", "T", "--stream", "market_data:AAPL", *extra]
        args = main.build_parser().parse_args(argv)
        return await asyncio.wait_for(listen.listen(args), 10)


async def test_count_stops_after_n_data_messages_even_inside_a_batch(capsys: pytest.CaptureFixture[str]) -> None:
    async def script(connection: Any) -> None:
        await connection.send(json.dumps({"message_type": "heartbeat", "payload": {}}))
        batch = {"message_type": "batch", "payload": {"messages": [tick(1), tick(2), tick(3)]}}
        await connection.send(json.dumps(batch))

    api = FakeWebSocketApi(script)
    assert await run_listen(api, "--count", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["subscribe", "heartbeat", "market_data", "market_data"]
    assert "market_data:AAPL #2" in lines[-1] and '"price": 102' in lines[-1]
    assert api.paths == ["/?token=T"]
    assert [frame["action"] for frame in api.frames] == ["hello", "subscribe"]
    assert api.frames[1]["streams"] == [{"stream_type": "market_data", "symbol": "AAPL"}]


async def test_seconds_ends_listening_and_is_a_deadline_for_count(capsys: pytest.CaptureFixture[str]) -> None:
    async def silence(connection: Any) -> None:
        return None

    assert await run_listen(FakeWebSocketApi(silence), "--seconds", "0.3") == 0
    assert await run_listen(FakeWebSocketApi(silence), "--seconds", "0.3", "--count", "1") == 1
    assert "0 of 1 data messages within 0.3 s" in capsys.readouterr().err


async def test_count_not_reached_before_the_server_closes_is_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    async def one_then_close(connection: Any) -> None:
        await connection.send(json.dumps(tick(1)))
        await connection.close()

    assert await run_listen(FakeWebSocketApi(one_then_close), "--count", "2") == 1
    assert "connection closed after 1 of 2 data messages" in capsys.readouterr().err


def test_dev_takes_fault_rates_for_the_services_and_the_management_api(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN `dev --faults` as the README shows it, WHEN parsed THEN each target gets its rate, with the seed
    args = parse("dev", "--faults", "dynamodb=0.05,management=0.05,sqs=0.02", "--fault-seed", "7")
    assert args.faults == {"dynamodb": 0.05, "management": 0.05, "sqs": 0.02}
    assert args.fault_seed == 7
    assert parse("dev").faults == {}
    # ... and bad input is refused with a clear error
    for bad, error in (
        ("lambda=0.1", "faults go to dynamodb, sqs, management, not 'lambda'"),
        ("dynamodb=lots", "dynamodb: not a number: 'lots'"),
        ("sqs=1.5", "sqs: a rate is a share of calls within [0, 1], not 1.5"),
        ("dynamodb", "expected name=rate pairs like dynamodb=0.05, got 'dynamodb'"),
    ):
        with pytest.raises(SystemExit):
            parse("dev", "--faults", bad)
        assert error in capsys.readouterr().err


def test_the_stack_splits_fault_rates_between_the_front_door_and_the_gateway() -> None:
    from local.stack.config import StackConfig

    # GIVEN rates for the services and the Management API, THEN the front door gets only the services'
    config = StackConfig(faults={"dynamodb": 0.05, "management": 0.1, "sqs": 0.02})
    assert config.aws_fault_rates() == {"dynamodb": 0.05, "sqs": 0.02}
    # ... and a target the stack cannot fault, or a rate beyond 1, is refused when the config is made
    with pytest.raises(ValueError, match="not 'events'"):
        StackConfig(faults={"events": 0.1})
    with pytest.raises(ValueError, match="within"):
        StackConfig(faults={"management": 2.0})


def test_local_publish_takes_the_bus_from_the_running_local_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import local.stack.config

    # GIVEN no local stack running (no outputs file)
    monkeypatch.setattr(local.stack.config, "OUTPUTS_FILE", tmp_path / "outputs.json")
    # THEN there is no bus name to guess: the error says how to get one
    with pytest.raises(SystemExit, match=r"no local stack is running.*--bus"):
        local_target.local_event_bus()
    # GIVEN the outputs file `make dev` writes for the stage it synthesized
    write_outputs(tmp_path / "outputs.json", {"QuantTrade-dev": stack_outputs(EventBusName="quanttrade-dev")})
    # THEN publish uses that stage's bus
    assert local_target.local_event_bus() == "quanttrade-dev"


def test_local_commands_use_the_running_local_stacks_region_whatever_aws_region_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import local.stack.config

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setattr(local.stack.config, "OUTPUTS_FILE", tmp_path / "outputs.json")
    # GIVEN no local stack running THEN the region is the one `make dev` uses
    assert local_target.local_region() == "us-east-1"
    # GIVEN a local stack started in another region THEN its region, from the ARNs it wrote
    arn = "arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:QuantTradeJwt-AbCdEf"
    write_outputs(tmp_path / "outputs.json", {"QuantTrade-prod": stack_outputs(LocalSigningKeySecretArn=arn)})
    assert local_target.local_region() == "ap-southeast-2"


def test_publish_with_only_a_profile_needs_a_bus(mocked_aws: None) -> None:
    # GIVEN credentials but no stack to read EventBusName from: naming a bus is the caller's job
    with pytest.raises(SystemExit, match="give --bus NAME"):
        main.main(["publish", "SystemStatus", "{}", "--aws", "--region", "eu-west-1", "--force"])
