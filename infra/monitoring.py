"""Alarms, their notification topic, and the operations dashboard.

Custom metrics are the EMF metrics the handlers emit through Powertools in
namespace `QuantTrade` with the dimension service=websocket.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.functions import METRICS_NAMESPACE
from quanttrade_ws import topology

SERVICE_DIMENSION = {"service": "websocket"}
# Everything the code emits; the dashboard shows each, some also alarm.
CUSTOM_METRICS = (
    "Delivered",
    "Gone",
    "Throttled",
    "DeliveryFailed",
    "InvalidEvent",
    "DeliveryLag",
    "ConnectionsOpened",
    "ConnectionsClosed",
    "AuthorizerDenied",
    "InternalErrors",
)

ONE_MINUTE = Duration.minutes(1)
FIVE_MINUTES = Duration.minutes(5)


def custom_metric(name: str, *, statistic: str = "Sum", period: Duration = FIVE_MINUTES) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map=SERVICE_DIMENSION,
        statistic=statistic,
        period=period,
    )


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: dict[str, lambda_.Function],
        source_queues: dict[str, sqs.Queue],
        dead_letter_queues: dict[str, sqs.Queue],
        websocket_api_id: str,
        stage_name: str,
        delivery_lag_threshold_ms: float,
        queue_age_threshold_seconds: int,
        alarm_email: str | None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = self._alarm_topic(alarm_email)
        self.alarms: list[cloudwatch.Alarm] = []

        for name, dlq in dead_letter_queues.items():
            # Anything in a DLQ is a message the service gave up on: one is enough to look.
            self._alarm(
                f"{name}Depth",
                dlq.metric_approximate_number_of_messages_visible(statistic="Maximum", period=ONE_MINUTE),
                threshold=0,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                description=f"Messages are waiting in {name}: inspect them, fix the cause, redrive.",
            )
        for name, queue in source_queues.items():
            # No consumer progress produces no DeliveryLag data at all, so a
            # stuck or disabled mapping is caught by the age of the queue head.
            self._alarm(
                f"{name}OldestMessageAge",
                queue.metric_approximate_age_of_oldest_message(statistic="Maximum", period=ONE_MINUTE),
                threshold=queue_age_threshold_seconds,
                evaluation_periods=3,
                description=f"{name} is not being drained: its oldest message is over the threshold.",
            )
        for name, function in functions.items():
            self._alarm(
                f"{name.title()}Errors",
                function.metric_errors(statistic="Sum", period=FIVE_MINUTES),
                threshold=1,
                description=f"The {name} function raised errors; handlers are meant never to fail.",
            )
            self._alarm(
                f"{name.title()}Throttles",
                function.metric_throttles(statistic="Sum", period=FIVE_MINUTES),
                threshold=1,
                description=f"Lambda throttled the {name} function: account or reserved concurrency is exhausted.",
            )
        self.authorizer_errors = next(
            alarm for alarm in self.alarms if alarm.node.id == f"{topology.AUTHORIZER.name.title()}Errors"
        )

        self._alarm(
            "DeliveryFailed",
            custom_metric("DeliveryFailed"),
            threshold=1,
            description="Posts to connections failed after all retries (not 410 Gone).",
        )
        # A client frame answered INTERNAL: DynamoDB kept conflicting or throttling past the
        # store's retries, or failed for a reason that is no domain outcome.
        self._alarm(
            "InternalErrors",
            custom_metric("InternalErrors"),
            threshold=1,
            description="Client frames answered INTERNAL (DynamoDB failures past the store's retries, or bugs).",
        )
        # Some 429s are expected at peaks and retried; three periods in a row
        # means the Management API quota is the bottleneck.
        self._alarm(
            "ManagementApiThrottled",
            custom_metric("Throttled"),
            threshold=1,
            evaluation_periods=3,
            description="The Management API has throttled posts for 15 minutes: request a quota increase.",
        )
        self._alarm(
            "DeliveryLagP99",
            custom_metric("DeliveryLag", statistic="p99", period=ONE_MINUTE),
            threshold=delivery_lag_threshold_ms,
            evaluation_periods=5,
            datapoints_to_alarm=3,
            description="p99 time from upstream event to post on the connection is above the threshold.",
        )

        self.dashboard = self._dashboard(functions, source_queues, dead_letter_queues, websocket_api_id, stage_name)

    def _alarm_topic(self, alarm_email: str | None) -> sns.Topic:
        # SNS encryption needs a customer managed key: CloudWatch cannot use
        # the AWS managed alias/aws/sns key to publish alarm notifications.
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Encrypts the QuantTrade alarm topic",
            enable_key_rotation=True,
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            )
        )
        topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name="QuantTrade WebSocket alarms",
            master_key=key,
            enforce_ssl=True,
        )
        # enforce_ssl replaces the default topic policy, so CloudWatch's right
        # to publish is stated explicitly (limited to this account's alarms).
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions={
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"
                    }
                },
            )
        )
        if alarm_email:
            topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        return topic

    def _alarm(
        self,
        construct_id: str,
        metric: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        evaluation_periods: int = 1,
        datapoints_to_alarm: int | None = None,
        comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    ) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=evaluation_periods,
            datapoints_to_alarm=datapoints_to_alarm,
            # Quiet periods (no events, no connections) emit nothing; silence is not a failure.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        action = cloudwatch_actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.alarms.append(alarm)
        return alarm

    def _dashboard(
        self,
        functions: dict[str, lambda_.Function],
        source_queues: dict[str, sqs.Queue],
        dead_letter_queues: dict[str, sqs.Queue],
        api_id: str,
        stage_name: str,
    ) -> cloudwatch.Dashboard:
        def api_metric(name: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/ApiGateway",
                metric_name=name,
                dimensions_map={"ApiId": api_id, "Stage": stage_name},
                statistic="Sum",
                period=FIVE_MINUTES,
            )

        def graph(title: str, metrics: Sequence[cloudwatch.IMetric], width: int = 8) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(title=title, left=metrics, width=width, height=6)

        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name="QuantTrade-WebSocket")
        dashboard.add_widgets(
            graph(
                "Connections",
                [custom_metric("ConnectionsOpened"), custom_metric("ConnectionsClosed"), api_metric("ConnectCount")],
            ),
            graph(
                "Client messages",
                [
                    api_metric("MessageCount"),
                    api_metric("ClientError"),
                    api_metric("ExecutionError"),
                    custom_metric("InternalErrors"),
                ],
            ),
            graph("Authorizer", [custom_metric("AuthorizerDenied"), api_metric("IntegrationError")]),
        )
        dashboard.add_widgets(
            graph(
                "Deliveries",
                [custom_metric(name) for name in ("Delivered", "Gone", "DeliveryFailed", "Throttled", "InvalidEvent")],
            ),
            graph(
                "DeliveryLag (ms)",
                [custom_metric("DeliveryLag", statistic=stat, period=ONE_MINUTE) for stat in ("p50", "p90", "p99")],
            ),
            graph(
                "Queues",
                [queue.metric_approximate_number_of_messages_visible() for queue in source_queues.values()]
                + [queue.metric_approximate_age_of_oldest_message() for queue in source_queues.values()]
                + [dlq.metric_approximate_number_of_messages_visible() for dlq in dead_letter_queues.values()],
            ),
        )
        dashboard.add_widgets(
            graph("Function errors", [fn.metric_errors(label=name) for name, fn in functions.items()]),
            graph("Function throttles", [fn.metric_throttles(label=name) for name, fn in functions.items()]),
            graph(
                "Function duration p99",
                [fn.metric_duration(statistic="p99", label=name) for name, fn in functions.items()],
            ),
        )
        dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=24))
        return dashboard
