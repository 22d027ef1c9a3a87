"""`python -m local publish`: put one upstream event on the event bus, checked first as fan-out would parse it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from local.cli.arguments import add_deployed_options
from local.cli.deployed import DEFAULT_REGION, aws_error, aws_session, deployed_stack, is_deployed
from local.cli.local_target import DEFAULT_AWS_ENDPOINT, local_event_bus, local_region


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
        session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local_region()
        )
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
        print(f"cannot publish to the bus {bus}: {aws_error(error)}", file=sys.stderr)
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


def add_command(commands: Any) -> None:
    """The `publish` command and its options. `commands`: the main parser's sub-parsers."""
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
    add_deployed_options(publish, "whose credentials put the event")
    publish.set_defaults(func=cmd_publish)
