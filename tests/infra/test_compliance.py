"""The template passes cfn-lint and cdk-nag's AwsSolutions pack, with few, reasoned suppressions."""

from __future__ import annotations

from aws_cdk.assertions import Match
from cfnlint.api import ManualArgs, lint

from tests.infra.conftest import Synth

# Each suppression in the stack is here with the reason it is unavoidable; a
# new one must be added on purpose, not slip in.
ALLOWED_SUPPRESSIONS = {
    "AwsSolutions-APIG4",  # WebSocket routes other than $connect cannot have an authorizer
    "AwsSolutions-IAM4",  # API Gateway's account-wide logging role uses the AWS managed policy
    "AwsSolutions-IAM5",  # X-Ray needs '*'; Management API connection ids are run-time values
    "AwsSolutions-L1",  # python3.13 pinned to the cp313 dependency layer build
    "AwsSolutions-SMG4",  # the HS256 key is rotated deliberately, not on a schedule
    "AwsSolutions-SQS3",  # the EventBridge target DLQ is itself a dead-letter queue
}


def test_cfn_lint_reports_no_errors_or_warnings(synth: Synth) -> None:
    matches = lint(
        synth.template_path.read_text(),
        config=ManualArgs(regions=["us-east-1", "eu-west-1", "ap-northeast-1"]),
    )
    # Informational findings (I*) are advice, not defects.
    findings = [f"{m.rule.id} {m.message} ({m.path})" for m in matches if not m.rule.id.startswith("I")]
    assert findings == []


def test_cdk_nag_has_no_unsuppressed_findings(synth: Synth) -> None:
    errors = synth.annotations.find_error("*", Match.string_like_regexp("AwsSolutions-.*"))
    warnings = synth.annotations.find_warning("*", Match.string_like_regexp("AwsSolutions-.*"))
    assert [f"{m.id}: {m.entry.data}" for m in errors + warnings] == []


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
