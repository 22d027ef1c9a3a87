"""The synthesized cloud assembly as the local stack reads it, and provisioned into moto in server mode.

The views are checked against the declarations the stack is built from (the
topology) and against what API Gateway, SQS and EventBridge require; the
deployment is checked against moto itself: every name or URL a function's
environment resolves to must exist there.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.cloud.assembly import CloudAssembly
from local.cloud.deployment import Deployment
from local.cloud.provisioning import Clients, ProvisioningError, provision
from local.cloud.synth import COMPLETE_MARKER, SynthesisError, assembly_key, synthesize
from local.cloud.template import Template
from local.moto_server import MotoServer
from quanttrade_ws import topology

EVENTS = Path(__file__).resolve().parents[2] / "events"
LOCAL_GATEWAY = "http://127.0.0.1:18081"
LOCAL_API_ID = "localws01"


@pytest.fixture(scope="module")
def template(assembly: CloudAssembly) -> Template:
    return assembly.template


def function_for(template: Template, declared: topology.Function) -> str:
    (logical_id,) = [lid for lid, f in template.functions.items() if f.handler == declared.handler]
    return logical_id


def queue_consumed_by(template: Template, declared: topology.Function) -> str:
    function_id = function_for(template, declared)
    (mapping,) = [m for m in template.event_source_mappings.values() if m.function_logical_id == function_id]
    return mapping.queue_logical_id


# ---------------------------------------------------------------- synthesis and its cache


def test_a_second_synthesis_with_unchanged_inputs_reuses_the_assembly(assembly: CloudAssembly) -> None:
    # GIVEN the session's assembly and the moment it was finished
    marker = assembly.directory / COMPLETE_MARKER
    finished_at = marker.stat().st_mtime_ns
    # WHEN the same inputs are synthesized again
    again = synthesize(assembly.context)
    # THEN the app did not run: same directory, flagged cached, not rewritten
    assert again.cached is True
    assert again.directory == assembly.directory
    assert marker.stat().st_mtime_ns == finished_at
    assert again.template.document == assembly.template.document


def test_the_cache_key_covers_every_input_but_compiled_files(tmp_path: Path) -> None:
    # GIVEN a project with an app, infra, handlers, the shared layer and requirements
    inputs = ("app.py", "cdk.json", "requirements.txt", "requirements.lock", "package-lock.json")
    for relative in (*inputs, "infra/stack.py", "handlers/connect.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(f"# {relative}\n")
    (tmp_path / "layers/shared/python/quanttrade_ws").mkdir(parents=True)
    shared = tmp_path / "layers/shared/python/quanttrade_ws/store.py"
    shared.write_text("x = 1\n")
    key = assembly_key({}, root=tmp_path)

    # WHEN only byte code appears THEN the key stays
    (tmp_path / "handlers/__pycache__").mkdir()
    (tmp_path / "handlers/__pycache__/connect.cpython-313.pyc").write_bytes(b"\0")
    assert assembly_key({}, root=tmp_path) == key
    # WHEN a shared-layer source, a handler, or the context changes THEN the key changes
    shared.write_text("x = 2\n")
    changed_layer = assembly_key({}, root=tmp_path)
    assert changed_layer != key
    (tmp_path / "handlers/connect.py").write_text("# edited\n")
    changed_handler = assembly_key({}, root=tmp_path)
    assert changed_handler != changed_layer
    assert assembly_key({"stage_name": "dev"}, root=tmp_path) != changed_handler
    # WHEN the lock the dependency layer is built from, or the pinned byte code compiler, changes THEN too
    (tmp_path / "requirements.lock").write_text("# relocked\n")
    relocked = assembly_key({}, root=tmp_path)
    assert relocked != changed_handler
    (tmp_path / "package-lock.json").write_text("{}\n")
    repinned = assembly_key({}, root=tmp_path)
    assert repinned != relocked
    # (a file outside the inputs does not matter)
    (tmp_path / "README.md").write_text("docs\n")
    assert assembly_key({}, root=tmp_path) == repinned


def test_a_failed_synthesis_says_why_and_leaves_nothing_that_looks_cached(tmp_path: Path) -> None:
    # GIVEN a context value the app refuses
    context = {"stage_name": "not a stage!"}
    # WHEN it is synthesized
    with pytest.raises(SynthesisError, match="stage_name"):
        synthesize(context, cache_dir=tmp_path)
    # THEN no assembly (finished or half-written) is left for a later call to reuse
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the template's views


def test_every_table_has_its_keys_indexes_ttl_and_on_demand_billing(template: Template) -> None:
    by_keys = {(t.partition_key, t.sort_key): t for t in template.tables.values()}
    assert len(by_keys) == len(topology.TABLES) == len(template.tables)
    for declared in topology.TABLES:
        table = by_keys[(declared.partition_key, declared.sort_key)]
        assert table.ttl_attribute == declared.ttl_attribute
        assert table.billing_mode == "PAY_PER_REQUEST"
        assert {i.name for i in table.global_indexes} == {i.name for i in declared.indexes}
        for index, want in zip(table.global_indexes, declared.indexes, strict=True):
            assert (index.key_schema[0].attribute, index.key_schema[-1].attribute) == (
                want.partition_key,
                want.sort_key,
            )
            assert index.projection_type == want.projection
        for attribute in {k.attribute for k in table.key_schema}:
            assert table.attribute_types[attribute] == declared.key_type(attribute)


def test_each_source_queue_is_fifo_with_content_deduplication_and_a_fifo_dlq(template: Template) -> None:
    for declared, consumer in ((topology.EVENTS_QUEUE, topology.FANOUT), (topology.DELIVERY_QUEUE, topology.DELIVERY)):
        queue = template.queues[queue_consumed_by(template, consumer)]
        assert queue.fifo is declared.fifo is True
        assert queue.content_based_deduplication is True  # EventBridge needs it to target a FIFO queue
        assert queue.visibility_timeout == declared.visibility_timeout_seconds
        assert queue.max_receive_count == declared.max_receive_count
        dlq = template.queues[queue.dead_letter_queue or ""]
        assert dlq.fifo is True  # a FIFO queue's DLQ must be FIFO too
        assert dlq.message_retention == 14 * 24 * 3600


def test_each_source_has_a_rule_to_the_events_queue_in_its_message_group_or_to_its_pipe(template: Template) -> None:
    events_queue = queue_consumed_by(template, topology.FANOUT)
    (bus,) = template.event_buses.values()
    assert bus.name == f"{topology.EVENT_BUS_NAME}-prod"  # the default stage's bus
    by_pattern = {
        (rule.event_pattern or {}).get("source", [""])[0]: rule
        for rule in template.rules.values()
        if rule.event_pattern
    }
    for source in topology.SOURCES:
        rule = by_pattern[source.source]
        assert rule.bus_logical_id == bus.logical_id
        assert rule.event_pattern == {"source": [source.source], "detail-type": [source.detail_type]}
        (target,) = rule.targets
        assert template.queues[target.dead_letter_logical_id or ""].fifo is False  # EventBridge DLQs are standard
        if source.pipe is None:
            assert target.target_logical_id == events_queue
            assert target.message_group_id == source.message_group
            continue
        # A piped source: the rule feeds the standard ingest queue, the pipe groups by stream into the events queue.
        (pipe,) = [p for p in template.pipes.values() if p.source_logical_id == target.target_logical_id]
        assert template.queues[pipe.source_logical_id].fifo is False and target.message_group_id is None
        assert pipe.target_logical_id == events_queue
        assert pipe.message_group_id is not None and pipe.message_group_id.path is not None
        assert pipe.message_group_id.path.text == source.pipe.group_id_path


def test_the_sweeper_runs_on_a_schedule(template: Template) -> None:
    assert template.scheduled_functions() == [("rate(5 minutes)", function_for(template, topology.SWEEPER))]


def test_the_connect_route_alone_is_authorized_by_the_token_in_the_query_string(template: Template) -> None:
    api = template.websocket_api
    assert api.route_selection_expression == topology.ROUTE_SELECTION_EXPRESSION == "$request.body.action"
    assert api.stage_name == "prod"
    assert set(api.routes) == set(topology.ROUTES)
    for route_key, declared in topology.ROUTES.items():
        assert template.functions[api.routes[route_key].function_logical_id].handler == declared.handler
    authorizer = api.authorizer_of("$connect")
    assert authorizer is not None
    assert authorizer.authorizer_type == "REQUEST"
    assert authorizer.identity_source == ("route.request.querystring.token",)
    assert template.functions[authorizer.function_logical_id].handler == topology.AUTHORIZER.handler
    assert api.routes["$connect"].authorization_type == "CUSTOM"
    assert [key for key in api.routes if api.authorizer_of(key)] == ["$connect"]


def test_the_admin_api_routes_are_iam_authorized_and_go_to_the_admin_function(template: Template) -> None:
    api = template.http_api
    assert set(api.routes) == set(topology.ADMIN_ROUTES)
    admin = function_for(template, topology.ADMIN)
    assert {(r.authorization_type, r.function_logical_id) for r in api.routes.values()} == {("AWS_IAM", admin)}


def test_every_event_source_mapping_reports_batch_item_failures(template: Template) -> None:
    mappings = template.event_source_mappings.values()
    consumers = {f.handler: f for f in topology.FUNCTIONS if f.consumes}
    assert {template.functions[m.function_logical_id].handler for m in mappings} == set(consumers)
    for mapping in mappings:
        assert mapping.reports_batch_item_failures
        assert mapping.enabled
        assert mapping.batch_size == consumers[template.functions[mapping.function_logical_id].handler].batch_size


def test_every_function_has_its_code_and_layers_as_directories_of_the_assembly(
    template: Template, assembly: CloudAssembly
) -> None:
    assert {f.handler for f in template.functions.values()} == {f.handler for f in topology.FUNCTIONS}
    for declared in topology.FUNCTIONS:
        function = template.functions[function_for(template, declared)]
        assert (function.timeout, function.memory_size) == (declared.timeout_seconds, declared.memory_mb)
        assert function.runtime == "python3.13" and function.architectures == ("arm64",)
        module = declared.handler.split(".")[0]
        assert (function.code_dir / f"{module}.py").is_file()
        assert function.code_dir.parent == assembly.directory
        shared, deps = function.layer_dirs
        assert (shared / "python" / "quanttrade_ws" / "__init__.py").is_file()
        assert (deps / "python").is_dir()
        assert template.resources[function.role_logical_id].type == "AWS::IAM::Role"


def test_both_signing_key_secrets_are_generated_as_64_letters_and_digits(template: Template) -> None:
    # One key for access tokens, one of its own for session tokens.
    assert sorted("JwtSigningKey" in lid for lid in template.secrets) == [False, True]
    assert len([lid for lid in template.secrets if "SessionSigningKey" in lid]) == 1
    for secret in template.secrets.values():
        assert secret.generate is not None
        assert (secret.generate.password_length, secret.generate.exclude_punctuation) == (64, True)


# ---------------------------------------------------------------- provisioned into moto


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer(port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(moto: MotoServer) -> Clients:
    return Clients.from_factory(moto.client)


@pytest.fixture(scope="module")
def deployment(template: Template, clients: Clients) -> Deployment:
    deployed = provision(template, clients, api_ids={template.websocket_api.logical_id: LOCAL_API_ID})
    deployed.bind_api(template.websocket_api.logical_id, local_base_url=LOCAL_GATEWAY)
    return deployed


def _assert_resolved(value: Any) -> None:
    if isinstance(value, dict):
        assert not any(key == "Ref" or key.startswith("Fn::") for key in value), value
        for item in value.values():
            _assert_resolved(item)
    elif isinstance(value, list):
        for item in value:
            _assert_resolved(item)


def test_every_function_environment_resolves_to_resources_that_exist_in_moto(
    template: Template, deployment: Deployment, clients: Clients
) -> None:
    table_names = set(clients.dynamodb.list_tables()["TableNames"])
    queue_urls = set(clients.sqs.list_queues()["QueueUrls"])
    for logical_id, function in template.functions.items():
        # WHEN the environment is resolved
        environment = deployment.function_environment(logical_id)
        # THEN it has exactly the template's variables, each a string
        assert set(environment) == set(function.environment)
        assert all(isinstance(v, str) for v in environment.values())
        for declared in topology.TABLES:
            assert environment[declared.env_var] in table_names
        for name, value in environment.items():
            if name.endswith("_URL") and value:
                assert value in queue_urls, name
        secret = clients.secretsmanager.get_secret_value(SecretId=environment["QT_JWT_SECRET_ARN"])["SecretString"]
        assert len(secret) == 64 and set(secret) <= set(string.ascii_letters + string.digits)
        assert environment["QT_REGION"] == clients.region
        if "QT_MANAGEMENT_ENDPOINT" in environment:
            assert environment["QT_MANAGEMENT_ENDPOINT"] == f"{LOCAL_GATEWAY}/prod"


def test_the_fanout_environment_names_its_queues_as_the_template_wires_them(
    template: Template, deployment: Deployment
) -> None:
    environment = deployment.function_environment(function_for(template, topology.FANOUT))
    events_queue = queue_consumed_by(template, topology.FANOUT)
    assert environment["EVENTS_QUEUE_URL"] == deployment.ref(events_queue)
    assert environment["EVENTS_QUEUE_DLQ_URL"] == deployment.ref(template.queues[events_queue].dead_letter_queue or "")
    assert environment["DELIVERY_QUEUE_URL"] == deployment.ref(queue_consumed_by(template, topology.DELIVERY))


def test_tables_queues_rules_and_bus_in_moto_are_as_the_template_declares(
    template: Template, deployment: Deployment, clients: Clients
) -> None:
    for logical_id, table in template.tables.items():
        description = clients.dynamodb.describe_table(TableName=deployment.ref(logical_id))["Table"]
        assert description["TableArn"] == deployment.get_att(logical_id, "Arn")
        assert {(k["AttributeName"], k["KeyType"]) for k in description["KeySchema"]} == {
            (k.attribute, k.key_type) for k in table.key_schema
        }
        assert {
            i["IndexName"]: i["Projection"]["ProjectionType"] for i in description.get("GlobalSecondaryIndexes", [])
        } == {i.name: i.projection_type for i in table.global_indexes}
        ttl = clients.dynamodb.describe_time_to_live(TableName=deployment.ref(logical_id))["TimeToLiveDescription"]
        assert ttl["AttributeName"] == table.ttl_attribute
    for logical_id, queue in template.queues.items():
        attributes = clients.sqs.get_queue_attributes(QueueUrl=deployment.ref(logical_id), AttributeNames=["All"])[
            "Attributes"
        ]
        assert attributes["QueueArn"] == deployment.get_att(logical_id, "Arn")
        assert attributes.get("FifoQueue", "false") == str(queue.fifo).lower()
        assert deployment.get_att(logical_id, "QueueName").endswith(".fifo") is queue.fifo
        if queue.dead_letter_queue:
            redrive = json.loads(attributes["RedrivePolicy"])
            assert redrive == {
                "deadLetterTargetArn": deployment.get_att(queue.dead_letter_queue, "Arn"),
                "maxReceiveCount": queue.max_receive_count,
            }
    for logical_id, rule in template.rules.items():
        bus = {"EventBusName": deployment.ref(rule.bus_logical_id)} if rule.bus_logical_id else {}
        name = deployment.ref(logical_id).split("|")[-1]
        (target,) = clients.events.list_targets_by_rule(Rule=name, **bus)["Targets"]
        assert target == deployment.resolve(rule.targets[0].raw)


def test_role_policies_resolve_to_the_provisioned_arns(template: Template, deployment: Deployment) -> None:
    fanout = function_for(template, topology.FANOUT)
    documents = deployment.role_policies(fanout)
    _assert_resolved(documents)
    statements = {s.get("Sid"): s for d in documents for s in d["Statement"]}
    assert statements["ManageConnections"]["Resource"] == (
        f"arn:aws:execute-api:{deployment.region}:{deployment.account}:{LOCAL_API_ID}/prod/*/@connections/*"
    )
    table_arns = {deployment.get_att(lid, "Arn") for lid in template.tables}
    assert set(statements["WriteTables"]["Resource"]) == table_arns
    assert (
        deployment.get_att(queue_consumed_by(template, topology.DELIVERY), "Arn")
        in statements["SendToQueues"]["Resource"]
    )


def test_an_event_published_to_the_bus_reaches_the_events_queue_in_its_group(
    template: Template, deployment: Deployment, clients: Clients
) -> None:
    # GIVEN an upstream alert
    sample = json.loads((EVENTS / "eventbridge" / "alert.json").read_text())
    (bus,) = template.event_buses
    # WHEN it is put on the bus
    clients.events.put_events(
        Entries=[
            {
                "Source": sample["source"],
                "DetailType": sample["detail-type"],
                "Detail": json.dumps(sample["detail"]),
                "EventBusName": deployment.ref(bus),
            }
        ]
    )
    # THEN the rule delivers it to the events queue in the source's message group
    url = deployment.ref(queue_consumed_by(template, topology.FANOUT))
    response = clients.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MessageSystemAttributeNames=["All"])
    (message,) = response["Messages"]
    assert message["Attributes"]["MessageGroupId"] == "alerting"
    assert json.loads(message["Body"])["detail"] == sample["detail"]
    clients.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_provisioning_again_finds_the_same_resources_and_creates_nothing(
    template: Template, deployment: Deployment, clients: Clients
) -> None:
    # GIVEN what moto holds after the first provisioning
    tables = clients.dynamodb.list_tables()["TableNames"]
    queues = clients.sqs.list_queues()["QueueUrls"]
    secrets = clients.secretsmanager.list_secrets()["SecretList"]
    secret_id = deployment.ref(next(iter(template.secrets)))
    value = clients.secretsmanager.get_secret_value(SecretId=secret_id)["SecretString"]
    # WHEN the same template is provisioned again (a restarted stack on the same moto)
    again = provision(template, clients, api_ids={template.websocket_api.logical_id: LOCAL_API_ID})
    # THEN every physical id is the same, nothing new exists, and the secret kept its value
    assert again.physical_ids == deployment.physical_ids
    assert again.attributes == deployment.attributes
    assert clients.dynamodb.list_tables()["TableNames"] == tables
    assert clients.sqs.list_queues()["QueueUrls"] == queues
    assert len(clients.secretsmanager.list_secrets()["SecretList"]) == len(secrets)
    assert clients.secretsmanager.get_secret_value(SecretId=secret_id)["SecretString"] == value


def test_a_secret_value_override_replaces_the_generated_one(
    template: Template, deployment: Deployment, clients: Clients
) -> None:
    # GIVEN a development key, as QT_JWT_SECRET would give it
    (secret_id,) = [lid for lid in template.secrets if "JwtSigningKey" in lid]
    override = os.environ.get("QT_JWT_SECRET") or "development-signing-key"
    generated = clients.secretsmanager.get_secret_value(SecretId=deployment.ref(secret_id))["SecretString"]
    try:
        # WHEN provisioning stores it
        again = provision(template, clients, secret_values={secret_id: override})
        # THEN the functions' secret ARN now holds it
        arn = again.function_environment(function_for(template, topology.AUTHORIZER))["QT_JWT_SECRET_ARN"]
        assert arn == deployment.ref(secret_id)
        assert clients.secretsmanager.get_secret_value(SecretId=arn)["SecretString"] == override
    finally:
        provision(template, clients, secret_values={secret_id: generated})


def _small(resources: dict[str, Any]) -> Template:
    return Template({"Resources": resources}, assembly_dir=Path("/nonexistent"), stack_name="Small")


def _table(key: str) -> dict[str, Any]:
    return {
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            "TableName": "small-fixed-name",
            "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
    }


def test_a_fixed_table_name_declared_with_another_key_schema_is_refused(clients: Clients) -> None:
    # GIVEN a table the template names itself, already provisioned
    provision(_small({"T": _table("pk")}), clients)
    # WHEN a template declares the same name with another key
    # THEN provisioning refuses instead of handing out a table of the wrong shape
    with pytest.raises(ProvisioningError, match="small-fixed-name"):
        provision(_small({"T": _table("id")}), clients)


def test_a_property_with_no_local_meaning_fails_provisioning_by_name(clients: Clients) -> None:
    template = _small({"Q": {"Type": "AWS::SQS::Queue", "Properties": {"FifoQueue": True, "Colour": "blue"}}})
    with pytest.raises(ProvisioningError, match=r"Q: properties \['Colour'\]"):
        provision(template, clients)
