"""Least privilege: one role per function, holding only what topology declares for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from quanttrade_ws import topology
from tests.infra.conftest import Synth

RESOURCE_SCOPED_SERVICES = ("dynamodb:", "sqs:", "execute-api:")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(synth: Synth) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement in the template, with the logical id that holds it."""
    for logical_id, policy in synth.resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            yield logical_id, statement
    for logical_id, policy in synth.resources("AWS::IAM::ManagedPolicy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            yield logical_id, statement
    for logical_id, role in synth.resources("AWS::IAM::Role").items():
        for inline in role["Properties"].get("Policies", []):
            for statement in inline["PolicyDocument"]["Statement"]:
                yield logical_id, statement


def _resources_for(statements: list[dict[str, Any]], action: str) -> list[str]:
    return [
        json.dumps(resource)
        for statement in statements
        if action in _as_list(statement["Action"])
        for resource in _as_list(statement["Resource"])
    ]


def test_no_statement_grants_a_wildcard_action(synth: Synth) -> None:
    for holder, statement in _statements(synth):
        for action in _as_list(statement.get("Action", [])):
            assert action != "*" and not action.endswith(":*"), f"{holder}: {action}"


def test_data_and_connection_actions_never_apply_to_every_resource(synth: Synth) -> None:
    for holder, statement in _statements(synth):
        actions = _as_list(statement.get("Action", []))
        if any(action.startswith(RESOURCE_SCOPED_SERVICES) for action in actions):
            assert "*" not in _as_list(statement["Resource"]), f"{holder}: {actions} on *"


def test_management_permission_is_scoped_to_this_api_stage_and_connections(synth: Synth) -> None:
    api_ref = {"Ref": synth.logical_id(synth.stack.websocket.api)}
    found = 0
    for _, statement in _statements(synth):
        if "execute-api:ManageConnections" not in _as_list(statement["Action"]):
            continue
        for resource in _as_list(statement["Resource"]):
            parts = resource["Fn::Join"][1]
            assert api_ref in parts
            assert parts[-1] == "/prod/*/@connections/*"
            found += 1
    assert found == sum(1 for declared in topology.FUNCTIONS if declared.posts_to_connections)


def test_only_posting_functions_may_manage_connections(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        granted = bool(_resources_for(synth.role_statements(declared), "execute-api:ManageConnections"))
        assert granted == declared.posts_to_connections, declared.name


def test_table_access_matches_each_declaration(synth: Synth) -> None:
    table_ids = {declared.logical_id: synth.logical_id(synth.stack.tables[declared]) for declared in topology.TABLES}
    for declared in topology.FUNCTIONS:
        statements = synth.role_statements(declared)
        reads = _resources_for(statements, "dynamodb:GetItem") + _resources_for(statements, "dynamodb:Query")
        writes = _resources_for(statements, "dynamodb:PutItem") + _resources_for(statements, "dynamodb:DeleteItem")
        for kind, granted, allowed in (("read", reads, declared.reads), ("write", writes, declared.writes)):
            allowed_ids = {table_ids[table.logical_id] for table in allowed}
            granted_ids = {table_id for table_id in table_ids.values() for resource in granted if table_id in resource}
            assert granted_ids == allowed_ids, f"{declared.name} {kind}: {granted_ids} != {allowed_ids}"


def test_authorizer_touches_no_table_queue_or_connection(synth: Synth) -> None:
    actions = {
        action for statement in synth.role_statements(topology.AUTHORIZER) for action in _as_list(statement["Action"])
    }
    assert not {action for action in actions if action.startswith(RESOURCE_SCOPED_SERVICES)}


def test_queue_sends_go_only_to_declared_queues(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        granted = _resources_for(synth.role_statements(declared), "sqs:SendMessage")
        expected = [synth.stack.fanout.queue(queue) for queue in declared.sends_to]
        if declared.dead_letters_of is not None:
            expected.append(synth.stack.fanout.dead_letter_queue(declared.dead_letters_of))
        expected_ids = {synth.logical_id(queue) for queue in expected}
        granted_ids = {
            logical_id for logical_id in synth.resources("AWS::SQS::Queue") if any(logical_id in r for r in granted)
        }
        assert granted_ids == expected_ids, declared.name


def test_log_permissions_name_the_functions_own_log_group(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        log_group_id = synth.logical_id(synth.stack.functions.log_groups[declared.name])
        resources = _resources_for(synth.role_statements(declared), "logs:PutLogEvents")
        assert resources == [json.dumps({"Fn::GetAtt": [log_group_id, "Arn"]})], declared.name


def test_function_roles_carry_no_managed_policies(synth: Synth) -> None:
    for declared in topology.FUNCTIONS:
        role = synth.json["Resources"][synth.role_id(declared)]["Properties"]
        assert "ManagedPolicyArns" not in role, declared.name


def test_admin_reads_only(synth: Synth) -> None:
    actions = {
        action for statement in synth.role_statements(topology.ADMIN) for action in _as_list(statement["Action"])
    }
    assert not actions & {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
    assert not any(action.startswith("secretsmanager:") for action in actions)


def test_each_key_is_readable_only_by_the_functions_that_use_it(synth: Synth) -> None:
    # GIVEN the access-token key and the session-token key
    access_id = synth.logical_id(synth.stack.token_key.secret)
    session_id = synth.logical_id(synth.stack.token_key.session_secret)
    readers: dict[str, set[str]] = {access_id: set(), session_id: set()}
    for declared in topology.FUNCTIONS:
        for resource in _resources_for(synth.role_statements(declared), "secretsmanager:GetSecretValue"):
            for secret_id in readers:
                if secret_id in resource:
                    readers[secret_id].add(declared.name)
    # THEN access tokens are verified by the authorizer and refresh (message); session tokens by message only
    assert readers[access_id] == {topology.AUTHORIZER.name, topology.MESSAGE.name}
    assert readers[session_id] == {topology.MESSAGE.name}


def test_the_message_function_may_batch_read_stream_heads_and_subscribe_in_one_transaction(synth: Synth) -> None:
    # GIVEN the message function's role (a subscribe reads every stream's head in one BatchGetItem and writes
    # its rows and the connection's counter in one TransactWriteItems; the local stack enforces each action
    # on its table, so a missing grant breaks `make dev` as it would the deployed stack)
    statements = synth.role_statements(topology.MESSAGE)

    def table_id(table: topology.Table) -> str:
        return synth.logical_id(synth.stack.tables[table])

    # THEN it may BatchGetItem the streams table, and Put and Update what a subscribe transaction holds
    assert any(table_id(topology.STREAMS) in r for r in _resources_for(statements, "dynamodb:BatchGetItem"))
    assert any(table_id(topology.SUBSCRIPTIONS) in r for r in _resources_for(statements, "dynamodb:PutItem"))
    assert any(table_id(topology.CONNECTIONS) in r for r in _resources_for(statements, "dynamodb:UpdateItem"))
