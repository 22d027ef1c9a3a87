"""DynamoDB tables, one per `topology.TABLES` entry."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from quanttrade_ws import topology


def _attribute(table: topology.Table, name: str) -> dynamodb.Attribute:
    kind = dynamodb.AttributeType.NUMBER if table.key_type(name) == "N" else dynamodb.AttributeType.STRING
    return dynamodb.Attribute(name=name, type=kind)


class Tables(Construct):
    """On-demand, TTL-expiring, point-in-time-recoverable tables, looked up by their declaration."""

    def __init__(self, scope: Construct, construct_id: str, *, removal_policy: RemovalPolicy) -> None:
        super().__init__(scope, construct_id)
        self._by_logical_id: dict[str, dynamodb.Table] = {}
        for declared in topology.TABLES:
            table = dynamodb.Table(
                self,
                declared.logical_id,
                partition_key=_attribute(declared, declared.partition_key),
                sort_key=_attribute(declared, declared.sort_key) if declared.sort_key else None,
                # Load follows market hours and connection storms; on-demand
                # needs no capacity planning and cannot throttle a quiet table
                # into a loud one.
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                # $disconnect is best effort, so every row carries an expiry
                # and DynamoDB removes what nobody cleaned up.
                time_to_live_attribute=declared.ttl_attribute,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True
                ),
                # A KMS key (rather than an AWS-owned one) puts every decrypt in CloudTrail.
                encryption=dynamodb.TableEncryption.AWS_MANAGED,
                stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES if declared.stream else None,
                removal_policy=removal_policy,
                deletion_protection=removal_policy != RemovalPolicy.DESTROY,
            )
            for index in declared.indexes:
                table.add_global_secondary_index(
                    index_name=index.name,
                    partition_key=_attribute(declared, index.partition_key),
                    sort_key=_attribute(declared, index.sort_key) if index.sort_key else None,
                    projection_type=dynamodb.ProjectionType(index.projection),
                )
            self._by_logical_id[declared.logical_id] = table

    def __getitem__(self, declared: topology.Table) -> dynamodb.Table:
        return self._by_logical_id[declared.logical_id]

    def items(self) -> list[tuple[topology.Table, dynamodb.Table]]:
        return [(declared, self[declared]) for declared in topology.TABLES]
