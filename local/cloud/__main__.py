"""Synthesize (or reuse) the cloud assembly and show what the local stack would run from it.

python -m local.cloud                          # synthesis time, cache hit or not, the template's views
python -m local.cloud -c stage=dev             # context, as for `python app.py`
python -m local.cloud --provision              # also provision into a throwaway moto server, twice, timed
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from local.cloud.provisioning import Clients, provision
from local.cloud.synth import SynthesisError, synthesize
from local.cloud.template import Template


def _summary(template: Template) -> dict[str, object]:
    api = template.websocket_api
    return {
        "tables": {lid: [k.attribute for k in t.key_schema] for lid, t in template.tables.items()},
        "queues": {lid: {"fifo": q.fifo, "dlq": q.dead_letter_queue} for lid, q in template.queues.items()},
        "rules": {lid: r.schedule_expression or r.event_pattern for lid, r in template.rules.items()},
        "functions": {lid: f.handler for lid, f in template.functions.items()},
        "websocket_routes": {key: route.function_logical_id for key, route in api.routes.items()},
        "event_source_mappings": {
            m.queue_logical_id: m.function_logical_id for m in template.event_source_mappings.values()
        },
        "pipes": {
            lid: {
                "from": p.source_logical_id,
                "to": p.target_logical_id,
                "group": p.message_group_id.path.text if p.message_group_id and p.message_group_id.path else None,
            }
            for lid, p in template.pipes.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.cloud", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--provision", action="store_true", help="provision into a throwaway moto server")
    args = parser.parse_args(argv)
    context = dict(pair.split("=", 1) for pair in args.context if "=" in pair)
    if len(context) != len(args.context):
        parser.error("context must be KEY=VALUE")

    started = time.monotonic()
    try:
        assembly = synthesize(context)
    except SynthesisError as error:
        print(error, file=sys.stderr)
        return 1
    state = "cached" if assembly.cached else "synthesized"
    print(f"{state} in {time.monotonic() - started:.2f}s: {assembly.directory}")
    print(json.dumps(_summary(assembly.template), indent=1))

    if args.provision:
        from local.moto_server import MotoServer

        with MotoServer(port=0) as server:
            clients = Clients.from_factory(server.client)
            for attempt in ("into an empty moto", "again (idempotent)"):
                started = time.monotonic()
                deployment = provision(assembly, clients)
                print(f"provisioned {attempt} in {time.monotonic() - started:.2f}s")
            print(json.dumps(deployment.physical_ids, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
