"""The local stack as a benchmark runs it: in a child process, with a known signing secret, and its counters.

`python -m bench.stack_server --options '{...}'` is what `ChildProcess("stack", options)`
starts; the options are `local.stack.config.StackConfig`'s fields.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from bench.child_process import announce, run_server, until_stdin_closes

SECRET = "bench-end-to-end-secret-at-least-32-bytes-long"


async def serve_stack(options: dict[str, Any]) -> None:
    """The whole local stack (moto in its own grandchild), announcing its endpoints and table names."""
    import logging

    from local.heap import freeze_startup_heap
    from local.stack.config import StackConfig
    from local.stack.console_logging import configure_logging
    from local.stack.local_stack import LocalStack

    configure_logging(options.pop("component_log_level", "WARNING"))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    config = StackConfig(host="127.0.0.1", gateway_port=0, moto_port=0, jwt_secret=SECRET, dashboard=False, **options)
    stack = LocalStack(config)
    await stack.start()
    freeze_startup_heap()  # as `make dev` does (local.cli.dev)
    try:
        announce(
            {
                "websocket_url": stack.websocket_url,
                "http_url": stack.http_url,
                "aws_endpoint_url": stack.aws_endpoint_url,
                "management_endpoint": stack.management_endpoint,
                # The template names its tables: the benchmark asks the stack instead of guessing.
                "subscriptions_table": stack.settings.subscriptions_table if stack.settings else "",
                "connections_table": stack.settings.connections_table if stack.settings else "",
                "event_bus_name": stack.event_bus_name,
                "pid": os.getpid(),
            }
        )
        await until_stdin_closes()
    finally:
        await stack.stop()


def stack_stats(http_url: str) -> dict[str, Any]:
    """The stack's own counters (function invocations and errors, pump lag): what CloudWatch would show."""
    from local.signed_http import signed_request

    try:
        # Signed as the local administrator: /local/stats is IAM-authorised like the admin API.
        with urllib.request.urlopen(
            signed_request("GET", f"{http_url}/local/stats", region="us-east-1"), timeout=10
        ) as response:
            return dict(json.loads(response.read()))
    except OSError as error:
        return {"error": str(error)}


def stack_client(service: str, endpoint: str) -> Any:
    """A boto3 client of one of the local stack's AWS services (`aws_endpoint_url`)."""
    import boto3

    make_client: Any = boto3.client  # the stubs' overloads take a literal service name, not one given at run time
    return make_client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def events_client(endpoint: str) -> Any:
    """An EventBridge client of the local stack's moto, to publish as upstream services do."""
    return stack_client("events", endpoint)


if __name__ == "__main__":
    run_server(serve_stack, "python -m bench.stack_server")
