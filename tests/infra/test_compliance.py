"""The template passes cfn-lint and cdk-nag's AwsSolutions pack, with few, reasoned suppressions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aws_cdk.assertions import Match
from cfnlint.api import ManualArgs, lint

from quanttrade_ws import topology
from tests.infra.conftest import CONTEXT_VARIANTS, Synth

# Each suppression in the stack is here with the reason it is unavoidable; a
# new one must be added on purpose, not slip in.
ALLOWED_SUPPRESSIONS = {
    "AwsSolutions-APIG4",  # WebSocket routes other than $connect cannot have an authorizer
    "AwsSolutions-COG2",  # cognito=true: MFA is optional, trading bots sign in without a second factor
    "AwsSolutions-COG3",  # cognito=true: threat protection needs Cognito's paid Plus plan
    "AwsSolutions-COG8",  # cognito=true: the Plus feature plan, likewise an operator's choice
    "AwsSolutions-IAM4",  # API Gateway's account-wide logging role uses the AWS managed policy
    "AwsSolutions-IAM5",  # X-Ray needs '*'; Management API connection ids are run-time values
    "AwsSolutions-L1",  # python3.13 pinned to the cp313 dependency layer build
    "AwsSolutions-SMG4",  # the HS256 key is rotated deliberately, not on a schedule
    "AwsSolutions-SQS3",  # the EventBridge target DLQ is itself a dead-letter queue
}


# Findings cdk-nag reports per IAM statement element (a wildcard resource or
# action, a managed policy): a suppression of these must say which elements.
SCOPED_RULES = frozenset({"AwsSolutions-IAM4", "AwsSolutions-IAM5"})


def cfn_lint_findings(synth: Synth) -> list[str]:
    """cfn-lint's errors and warnings on the template; informational findings (I*) are advice, not defects."""
    matches = lint(
        synth.template_path.read_text(),
        config=ManualArgs(regions=["us-east-1", "eu-west-1", "ap-northeast-1"]),
    )
    return [f"{m.rule.id} {m.message} ({m.path})" for m in matches if not m.rule.id.startswith("I")]


def cdk_nag_findings(synth: Synth) -> list[str]:
    errors = synth.annotations.find_error("*", Match.string_like_regexp("AwsSolutions-.*"))
    warnings = synth.annotations.find_warning("*", Match.string_like_regexp("AwsSolutions-.*"))
    return [f"{m.id}: {m.entry.data}" for m in errors + warnings]


def test_cfn_lint_reports_no_errors_or_warnings(synth: Synth) -> None:
    assert cfn_lint_findings(synth) == []


def test_cdk_nag_has_no_unsuppressed_findings(synth: Synth) -> None:
    assert cdk_nag_findings(synth) == []


@pytest.mark.parametrize("name", sorted(CONTEXT_VARIANTS))
def test_every_documented_context_variant_lints_clean(name: str, variant: Callable[[str], Synth]) -> None:
    # GIVEN the template a documented context produces
    synthesized = variant(name)
    # THEN cfn-lint finds no error or warning, cdk-nag nothing unsuppressed, and CDK warns of nothing
    assert cfn_lint_findings(synthesized) == []
    assert cdk_nag_findings(synthesized) == []
    assert [f"{m.id}: {m.entry.data}" for m in synthesized.annotations.find_warning("*", Match.any_value())] == []
    # AND every suppression it carries is an expected one, IAM ones scoped to their findings
    for logical_id, resource in synthesized.json["Resources"].items():
        for suppression in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            assert suppression["id"] in ALLOWED_SUPPRESSIONS, f"{logical_id}: {suppression['id']}"
            if suppression["id"] in SCOPED_RULES:
                assert suppression.get("applies_to"), f"{logical_id}: {suppression['id']} is a blanket suppression"


def test_every_iam_suppression_names_the_findings_it_covers(synth: Synth) -> None:
    # cdk-nag writes a suppression's `appliesTo` into the metadata as `applies_to`; a suppression
    # without it silences the rule for every statement of the resource, present and future.
    scoped = 0
    for logical_id, resource in synth.json["Resources"].items():
        for suppression in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            if suppression["id"] in SCOPED_RULES:
                assert suppression.get("applies_to"), f"{logical_id}: {suppression['id']} is a blanket suppression"
                scoped += 1
    assert scoped > 0  # the roles' X-Ray and Management API wildcards, the account logging role's managed policy


def test_the_connection_wildcard_suppression_is_pinned_to_the_api_stage(synth: Synth) -> None:
    # GIVEN a function that posts to connections
    role_id = synth.role_id(topology.FANOUT)
    suppressions = synth.json["Resources"][role_id]["Metadata"]["cdk_nag"]["rules_to_suppress"]
    patterns = [entry for s in suppressions for entry in s["applies_to"] if isinstance(entry, dict)]
    # THEN its wildcard suppression matches only connections of this stage of the API
    (pattern,) = patterns
    assert pattern["regex"].endswith(r"\/prod\/\*\/@connections\/\*$/")
    assert "<AWS::Region>:<AWS::AccountId>:<" in pattern["regex"]


def test_every_suppression_is_expected_and_explains_itself(synth: Synth) -> None:
    seen = set()
    for logical_id, resource in synth.json["Resources"].items():
        for suppression in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            seen.add(suppression["id"])
            assert suppression["id"] in ALLOWED_SUPPRESSIONS, f"{logical_id}: {suppression['id']}"
            assert len(suppression["reason"]) >= 60, f"{logical_id}: {suppression['id']} needs a real reason"
    assert seen <= ALLOWED_SUPPRESSIONS


def test_no_cdk_warnings_about_the_stack(synth: Synth) -> None:
    warnings = synth.annotations.find_warning("*", Match.any_value())
    assert [f"{m.id}: {m.entry.data}" for m in warnings] == []
