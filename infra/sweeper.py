"""The periodic sweep of connections whose $disconnect never arrived.

API Gateway delivers $disconnect on a best-effort basis, and TTL deletion can
lag by days, so a schedule closes and removes stale connections (and what they
own) every few minutes.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

SWEEP_INTERVAL = Duration.minutes(5)


class Sweeper(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, sweeper_function: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)
        self.rule = events.Rule(
            self,
            "Schedule",
            description="Close and clean up stale WebSocket connections",
            schedule=events.Schedule.rate(SWEEP_INTERVAL),
            # A missed sweep is made up by the next one five minutes later;
            # retrying a late one for hours would only pile sweeps up.
            targets=[targets.LambdaFunction(sweeper_function, retry_attempts=2, max_event_age=SWEEP_INTERVAL)],
        )
