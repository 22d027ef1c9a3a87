"""The deploy smoke: every function of the template, invoked with the samples in `events/` that belong to it.

Each function runs as the local stack runs it (its code asset and layers, its
template environment, its role), so a defect that would break the deployed
stack (a variable the template forgot, a permission the role lacks, a wrong
handler string, a module missing from the layer) shows up here as a failure
that names the function and the cause. `LocalStack.start()` runs it before
serving; `tests/e2e/test_deploy_smoke.py` asserts it covers every function.

Which samples belong to which function comes from the template:

* the `$connect` authorizer gets `apigateway/authorizer.json` (its token
  re-minted with the stack's key, as a client would present one);
* each WebSocket route's function gets the `apigateway/` samples of that
  route key, in one smoke connection's life: `$connect` first, the actions,
  then `$disconnect`;
* the function whose queue the EventBridge rules feed gets
  `sqs/sqs_batch_events.json` and every `eventbridge/` sample as the SQS
  record the rule would deliver; any other queue's function gets
  `sqs/sqs_batch_delivery.json`;
* a scheduled function gets the event its rule's schedule sends;
* each admin HTTP API route's function gets `http/` samples of its routes.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local.stack.event_sources import scheduled_event

if TYPE_CHECKING:
    from local.stack.local_stack import LocalStack

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
SMOKE_USER = "deploy-smoke"


@dataclass
class SmokeReport:
    invoked: dict[str, list[str]] = field(default_factory=dict)  # function logical id -> samples it answered
    failures: list[str] = field(default_factory=list)

    def record(self, logical_id: str, sample: str) -> None:
        self.invoked.setdefault(logical_id, []).append(sample)


def load(*parts: str) -> Any:
    return json.loads(EVENTS_DIR.joinpath(*parts).read_text(encoding="utf-8"))


class _Smoke:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.template = stack.template
        self.report = SmokeReport()
        self.connection_id = base64.b64encode(uuid.uuid4().bytes[:10]).decode()

    async def invoke(self, logical_id: str, sample: str, event: Any) -> Any:
        function = self.stack.functions[logical_id]
        try:
            result = await function.invoke(event)
        except Exception as error:
            self.fail(logical_id, sample, f"{type(error).__name__}: {error}")
            return None
        self.report.record(logical_id, sample)
        return result

    def fail(self, logical_id: str, sample: str, cause: str) -> None:
        declared = self.template.functions[logical_id]
        name = self.stack.functions[logical_id].name
        self.report.failures.append(f"{name} ({logical_id}, handler {declared.handler}) with {sample}: {cause}")

    def expect_status(self, logical_id: str, sample: str, result: Any, wanted: set[int]) -> None:
        if result is None:
            return
        status = result.get("statusCode") if isinstance(result, dict) else None
        if status not in wanted:
            self.fail(
                logical_id, sample, f"answered {json.dumps(result)[:300]}, expected statusCode in {sorted(wanted)}"
            )

    # ------------------------------------------------------------------ WebSocket API

    async def authorizer(self) -> None:
        api = self.template.websocket_api
        for authorizer in api.authorizers.values():
            event = load("apigateway", "authorizer.json")
            token = self.stack.token(SMOKE_USER)
            event["queryStringParameters"]["token"] = token
            event.get("multiValueQueryStringParameters", {})["token"] = [token]
            context = event.setdefault("requestContext", {})
            context["apiId"] = self.stack.gateway.config.api_id if self.stack.gateway else context.get("apiId")
            stage = api.stage_name
            event["methodArn"] = (
                f"arn:aws:execute-api:{self.stack.config.region}:123456789012:{context['apiId']}/{stage}/$connect"
            )
            sample = "apigateway/authorizer.json"
            result = await self.invoke(authorizer.function_logical_id, sample, event)
            if result is None:
                continue
            statements = (result.get("policyDocument") or {}).get("Statement") or []
            if not any(statement.get("Effect") == "Allow" for statement in statements):
                self.fail(authorizer.function_logical_id, sample, f"refused a valid token: {json.dumps(result)[:300]}")

    def _route_samples(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        by_route: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for path in sorted((EVENTS_DIR / "apigateway").glob("*.json")):
            event = json.loads(path.read_text(encoding="utf-8"))
            route_key = (event.get("requestContext") or {}).get("routeKey")
            if route_key and "methodArn" not in event:  # the authorizer's request is the authorizer's sample
                by_route.setdefault(route_key, []).append((f"apigateway/{path.name}", event))
        return by_route

    def _as_smoke_connection(self, event: dict[str, Any]) -> dict[str, Any]:
        event = copy.deepcopy(event)
        context = event["requestContext"]
        context["connectionId"] = self.connection_id
        if self.stack.gateway is not None:
            context["apiId"] = self.stack.gateway.config.api_id
            context["stage"] = self.template.websocket_api.stage_name
        authorizer = context.get("authorizer")
        if isinstance(authorizer, dict):
            authorizer["principalId"] = SMOKE_USER
        return event

    async def websocket_routes(self) -> None:
        api = self.template.websocket_api
        samples = self._route_samples()
        order = ["$connect", *(key for key in api.routes if key not in ("$connect", "$disconnect")), "$disconnect"]
        for route_key in order:
            route = api.routes.get(route_key)
            if route is None:
                continue
            route_samples = samples.get(route_key, [])
            if not route_samples:
                self.fail(route.function_logical_id, f"route {route_key}", "no sample in events/apigateway/")
                continue
            for sample, event in route_samples:
                result = await self.invoke(route.function_logical_id, sample, self._as_smoke_connection(event))
                self.expect_status(route.function_logical_id, sample, result, {200})

    # ------------------------------------------------------------------ queues

    def _rule_fed_queues(self) -> set[str]:
        return {
            target.target_logical_id
            for rule in self.template.rules.values()
            if rule.event_pattern is not None
            for target in rule.targets
            if target.target_logical_id is not None
        }

    def _records(self, sample: dict[str, Any], queue_logical_id: str) -> dict[str, Any]:
        deployment = self.stack.deployment
        assert deployment is not None
        event = copy.deepcopy(sample)
        arn = deployment.get_att(queue_logical_id, "Arn")
        for record in event["Records"]:
            record["eventSourceARN"] = arn
            record["awsRegion"] = self.stack.config.region
        return event

    def _eventbridge_records(self, queue_logical_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Each upstream sample as the SQS record its rule delivers: the event itself as the body."""
        template_record = load("sqs", "sqs_batch_events.json")["Records"][0]
        batches = []
        for path in sorted((EVENTS_DIR / "eventbridge").glob("*.json")):
            body = path.read_text(encoding="utf-8")
            record = copy.deepcopy(template_record)
            record["messageId"] = str(uuid.uuid4())
            record["body"] = body
            record["md5OfBody"] = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
            record["attributes"]["MessageDeduplicationId"] = hashlib.sha256(body.encode()).hexdigest()
            batches.append((f"eventbridge/{path.name}", self._records({"Records": [record]}, queue_logical_id)))
        return batches

    async def queue_consumers(self) -> None:
        fed_by_rules = self._rule_fed_queues()
        for mapping in self.template.event_source_mappings.values():
            queue = mapping.queue_logical_id
            if queue in fed_by_rules:
                batches = [("sqs/sqs_batch_events.json", self._records(load("sqs", "sqs_batch_events.json"), queue))]
                batches += self._eventbridge_records(queue)
            else:
                batches = [
                    ("sqs/sqs_batch_delivery.json", self._records(load("sqs", "sqs_batch_delivery.json"), queue))
                ]
            for sample, event in batches:
                result = await self.invoke(mapping.function_logical_id, sample, event)
                if result is None:
                    continue
                failures = result.get("batchItemFailures") if isinstance(result, dict) else None
                if failures:
                    self.fail(mapping.function_logical_id, sample, f"reported failed records {failures}")

    # ------------------------------------------------------------------ schedules and the admin API

    async def schedules(self) -> None:
        for rule in self.template.schedules.values():
            for target in rule.targets:
                if target.target_logical_id in self.template.functions:
                    await self.invoke(
                        target.target_logical_id,
                        f"schedule {rule.schedule_expression}",
                        scheduled_event(self.stack.config.region, rule.logical_id),
                    )

    async def admin_routes(self) -> None:
        api = self.template.http_api
        for path in sorted((EVENTS_DIR / "http").glob("*.json")):
            event = json.loads(path.read_text(encoding="utf-8"))
            route = api.routes.get(event.get("routeKey", ""))
            sample = f"http/{path.name}"
            if route is None:
                continue  # a sample of a route this template does not have
            result = await self.invoke(route.function_logical_id, sample, event)
            self.expect_status(route.function_logical_id, sample, result, {200, 404})
        for route_key, route in api.routes.items():
            if route.function_logical_id not in self.report.invoked:
                self.fail(route.function_logical_id, f"route {route_key}", "no sample in events/http/")


async def run_smoke(stack: LocalStack) -> SmokeReport:
    """Invoke every function with its samples; the report lists each failure with the function and the cause."""
    smoke = _Smoke(stack)
    await smoke.authorizer()
    await smoke.websocket_routes()
    await smoke.queue_consumers()
    await smoke.schedules()
    await smoke.admin_routes()
    for logical_id in stack.template.functions:
        if logical_id not in smoke.report.invoked and not any(logical_id in f for f in smoke.report.failures):
            smoke.fail(logical_id, "(none)", "no sample in events/ belongs to this function")
    return smoke.report
