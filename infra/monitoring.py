"""Alarms, their notification topic, and the operations dashboard.

Custom metrics are the EMF metrics the handlers emit through Powertools in
namespace `QuantTrade` with the dimension service=quanttrade-websocket (topology.SERVICE_NAME).

Every alarm is meant to need a person: a refused token, a client over its
limits or one throttle the SDK retried is not one. So the authorizer has no
Errors alarm (a refusal is a Deny, not an error) but one on the failures it
counts itself (`AuthorizerFailures`), and API Gateway's ClientError (refused
handshakes, bad frames) is shown, never alarmed on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from quanttrade_ws import topology

SERVICE_DIMENSION = {"service": topology.SERVICE_NAME}
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
    "AuthorizerFailures",
    "InternalErrors",
)

ONE_MINUTE = Duration.minutes(1)
FIVE_MINUTES = Duration.minutes(5)
# p99 duration at this share of the timeout means the slowest invocations are
# about to be killed mid-batch (SQS redelivers, clients see timeouts).
DURATION_TIMEOUT_SHARE = 0.8
# $connect answers over-limit clients with 4XX, which API Gateway counts as
# IntegrationError; this many in five minutes, twice running, is no longer a few clients.
INTEGRATION_ERROR_THRESHOLD = 10


def custom_metric(name: str, *, statistic: str = "Sum", period: Duration = FIVE_MINUTES) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=topology.METRICS_NAMESPACE,
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
        tables: dict[str, dynamodb.Table],
        websocket_api_id: str,
        stage_name: str,
        physical_name: Callable[[str], str],
        stage: str,
        delivery_lag_threshold_ms: float,
        queue_age_threshold_seconds: int,
        alarm_email: str | None,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self._physical_name = physical_name  # alarm and dashboard names, unique per stage
        self.topic = self._alarm_topic(alarm_email, stage, removal_policy)
        self.alarms: list[cloudwatch.Alarm] = []
        self._api_id = websocket_api_id
        self._stage_name = stage_name

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
        timeouts = {declared.name: declared.timeout_seconds for declared in topology.FUNCTIONS}
        for function_name, function in functions.items():
            title = function_name.title()
            if function_name != topology.AUTHORIZER.name:
                self._alarm(
                    f"{title}Errors",
                    function.metric_errors(statistic="Sum", period=FIVE_MINUTES),
                    threshold=1,
                    description=f"The {function_name} function raised errors; handlers are meant never to fail.",
                )
            self._alarm(
                f"{title}Throttles",
                function.metric_throttles(statistic="Sum", period=FIVE_MINUTES),
                threshold=1,
                description=f"Lambda throttled the {function_name} function: account or reserved concurrency is "
                "exhausted.",
            )
            timeout_ms = timeouts[function_name] * 1000
            self._alarm(
                f"{title}DurationNearTimeout",
                function.metric_duration(statistic="p99", period=FIVE_MINUTES),
                threshold=DURATION_TIMEOUT_SHARE * timeout_ms,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                description=f"p99 duration of the {function_name} function is at or above "
                f"{DURATION_TIMEOUT_SHARE:.0%} of its {timeouts[function_name]} s timeout: the slowest invocations "
                "are about to time out.",
            )
        # Refusals are Deny answers and never reach Errors; what the authorizer
        # counts here is its own fault (keys unreadable, JWKS unreachable, a bug),
        # and every such connection attempt was answered 500.
        self.authorizer_failures = self._alarm(
            "AuthorizerFailures",
            custom_metric("AuthorizerFailures"),
            threshold=1,
            description="The $connect authorizer failed (not a refused token): signing keys or the JWKS could not "
            "be read, or a bug. Clients cannot connect; see the authorizer's log.",
        )

        for logical_id, table in tables.items():
            # On-demand tables throttle only past twice their previous peak or on
            # a hot partition; the SDK retries a blip, so two periods of three.
            for kind, metric_name in (("Read", "ReadThrottleEvents"), ("Write", "WriteThrottleEvents")):
                self._alarm(
                    f"{logical_id}{kind}Throttles",
                    table.metric(metric_name, statistic="Sum", period=FIVE_MINUTES),
                    threshold=1,
                    evaluation_periods=3,
                    datapoints_to_alarm=2,
                    description=f"DynamoDB is throttling {kind.lower()}s on {logical_id}: a hot partition key or "
                    "a surge past the on-demand peak. Failures past the retries show as InternalErrors.",
                )

        # WebSocket API: ExecutionError is API Gateway failing to call a
        # function (throttled, timed out, crashed), the 5XX of a WebSocket API.
        self._alarm(
            "WebSocketExecutionErrors",
            self.api_metric("ExecutionError"),
            threshold=1,
            description="API Gateway could not call an integration (Lambda throttled, timed out or failed): "
            "clients got internal errors.",
        )
        self._alarm(
            "WebSocketIntegrationErrors",
            self.api_metric("IntegrationError"),
            threshold=INTEGRATION_ERROR_THRESHOLD,
            evaluation_periods=2,
            description="Integrations answered 4XX/5XX at a sustained rate: more than the $connect limit refusals "
            "a few clients cause.",
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

        self.dashboard = self._dashboard(functions, source_queues, dead_letter_queues)

    def api_metric(self, metric_name: str, *, period: Duration = FIVE_MINUTES) -> cloudwatch.Metric:
        """A WebSocket API metric of this API's stage (dimensions ApiId and Stage)."""
        return cloudwatch.Metric(
            namespace="AWS/ApiGateway",
            metric_name=metric_name,
            dimensions_map={"ApiId": self._api_id, "Stage": self._stage_name},
            statistic="Sum",
            period=period,
        )

    def _alarm_topic(self, alarm_email: str | None, stage: str, removal_policy: RemovalPolicy) -> sns.Topic:
        # SNS encryption needs a customer managed key: CloudWatch cannot use
        # the AWS managed alias/aws/sns key to publish alarm notifications.
        # It follows the stage's removal policy: a retained key keeps old
        # notifications readable; a throwaway stage's is scheduled for deletion
        # (after KMS's shortest waiting period) instead of costing a month each.
        destroy = removal_policy == RemovalPolicy.DESTROY
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Encrypts the QuantTrade alarm topic",
            enable_key_rotation=True,
            removal_policy=removal_policy,
            pending_window=Duration.days(7) if destroy else None,
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
            display_name=f"QuantTrade {stage} alarms",
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
            alarm_name=self._physical_name(construct_id),
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
    ) -> cloudwatch.Dashboard:
        api_metric = self.api_metric

        def graph(title: str, metrics: Sequence[cloudwatch.IMetric], width: int = 8) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(title=title, left=metrics, width=width, height=6)

        def per_second(metric_name: str, label: str) -> cloudwatch.MathExpression:
            # Ids are per graph, so each expression names its metric after itself.
            metric_id = metric_name.lower()
            return cloudwatch.MathExpression(
                expression=f"{metric_id} / PERIOD({metric_id})",
                using_metrics={metric_id: custom_metric(metric_name, period=ONE_MINUTE)},
                label=label,
                period=ONE_MINUTE,
            )

        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=self._physical_name("WebSocket"))
        dashboard.add_widgets(
            graph(
                "Connections",
                [
                    api_metric("ConnectCount"),
                    custom_metric("ConnectionsOpened"),
                    custom_metric("ConnectionsClosed"),
                    # Opened minus closed per period: the trend of the open connection count.
                    cloudwatch.MathExpression(
                        expression="opened - closed",
                        using_metrics={
                            "opened": custom_metric("ConnectionsOpened"),
                            "closed": custom_metric("ConnectionsClosed"),
                        },
                        label="Net new connections",
                        period=FIVE_MINUTES,
                    ),
                ],
            ),
            graph(
                "Deliveries per second",
                [per_second("Delivered", "Delivered/s"), per_second("DeliveryFailed", "Failed/s")],
            ),
            graph(
                "DeliveryLag (ms)",
                [custom_metric("DeliveryLag", statistic=stat, period=ONE_MINUTE) for stat in ("p50", "p90", "p99")],
            ),
        )
        dashboard.add_widgets(
            graph(
                "Errors",
                [
                    api_metric("ExecutionError"),
                    api_metric("IntegrationError"),
                    custom_metric("InternalErrors"),
                    custom_metric("DeliveryFailed"),
                    custom_metric("AuthorizerFailures"),
                ],
            ),
            graph(
                "Client messages and refusals",
                [
                    api_metric("MessageCount"),
                    api_metric("ClientError"),
                    custom_metric("AuthorizerDenied"),
                ],
            ),
            graph(
                "Deliveries",
                [custom_metric(name) for name in ("Delivered", "Gone", "DeliveryFailed", "Throttled", "InvalidEvent")],
            ),
        )
        dashboard.add_widgets(
            graph(
                "Queues",
                [queue.metric_approximate_number_of_messages_visible() for queue in source_queues.values()]
                + [queue.metric_approximate_age_of_oldest_message() for queue in source_queues.values()]
                + [dlq.metric_approximate_number_of_messages_visible() for dlq in dead_letter_queues.values()],
            ),
            graph("Function errors", [fn.metric_errors(label=name) for name, fn in functions.items()]),
            graph(
                "Function duration p99",
                [fn.metric_duration(statistic="p99", label=name) for name, fn in functions.items()],
            ),
        )
        dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=24))
        return dashboard
