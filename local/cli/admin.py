"""The admin API's reads: `stats`, `connection`, `subscriptions`, `members`.

Locally the gateway's /admin routes, signed as the local administrator; on a
deployed stack its AdminApiUrl, SigV4-signed (service execute-api) with the
profile's credentials.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from local.cli.arguments import add_deployed_options, positive
from local.cli.deployed import DEFAULT_REGION, aws_session, deployed_stack, is_deployed, local_only_profile
from local.cli.local_target import ADMIN_PREFIX, DEFAULT_HTTP_URL, local_region

_EXECUTE_API_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


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
    return signed_as_admin("GET", url, region=local_region())


def admin_request(args: argparse.Namespace, path: str) -> Any:
    """GET `path` of the admin API: the local gateway's /admin routes signed as the local administrator, or a
    deployed stack's AdminApiUrl signed with SigV4 (service execute-api) with the profile's credentials."""
    from botocore.exceptions import BotoCoreError

    if not is_deployed(args):
        local_only_profile(args, "admin API")
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


def add_commands(commands: Any) -> None:
    """The admin API's commands (stats, connection, subscriptions, members) on `commands`, the sub-parsers."""

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
        command.add_argument("--timeout", type=positive(float), default=10.0, help="seconds to wait (10)")
        add_deployed_options(command, "whose credentials sign the request (it needs execute-api:Invoke)")
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
