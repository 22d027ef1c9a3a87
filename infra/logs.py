"""Log groups with an explicit retention, shared by every construct that writes logs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_logs as logs
from constructs import Construct


def retained_log_group(
    scope: Construct, construct_id: str, *, days: int, removal_policy: RemovalPolicy
) -> logs.LogGroup:
    log_group = logs.LogGroup(scope, construct_id, removal_policy=removal_policy)
    # `RetentionDays` is an enum of names, while the context gives a number of
    # days (already checked against the values CloudWatch accepts), so the
    # number is written to the resource directly.
    cfn_log_group = log_group.node.default_child
    assert isinstance(cfn_log_group, logs.CfnLogGroup)
    cfn_log_group.retention_in_days = days
    return log_group
