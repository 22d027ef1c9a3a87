"""A discrete-event model of one stack on AWS that runs the project's real fan-out code.

`python -m bench.aws_model` simulates, on simulated time, EventBridge -> SQS ->
the fan-out Lambda -> DynamoDB and the Management API, and the delivery queue ->
the delivery Lambda for large audiences. What runs inside each simulated Lambda
invocation is the real `EventFanOut.process_events` / `EventFanOut.process_chunks` with the
real `DynamoStore` (its sequencing transaction, its audience Query, its retries):
only the ports are simulated -

* the DynamoDB client handed to `DynamoStore` (`SimDynamoDB`): GetItem, Query and
  TransactWriteItems with latencies, per-partition throughput (a stream head is one
  hot item) and the conditions `sequence_event` relies on;
* the `ConnectionGateway` (`SimGateway`): `post_many` with the real client's shape -
  `post_concurrency` requests in flight, the account's token bucket (429 beyond it),
  the real `full_jitter_backoff` between attempts, `max_post_attempts`, and the CPU
  each post costs the function's one event loop;
* the `QueueSender` (`SimSender`): SendMessageBatch to the delivery queue, 10 a call,
  under the queue's send quota.

Around them: `SimQueue` (FIFO groups with one batch in flight per group, or a standard
queue with the event source mapping's scale-up rate, visibility timeouts and
redelivery of failed records), `LambdaFunction` (warm instances, cold starts,
concurrency) and EventBridge (PutEvents, rule delivery to the queue).

Processes are threads run one at a time by the scheduler (`Sim`): a simulated call
blocks its thread until the clock reaches its end, so several invocations interleave
in time order on shared quotas. Sources of every figure are in bench/README.md.

Coarse-graining (said again in the README): audiences are generated per stream and
disjoint; every post is simulated, but a scenario simulates a bounded number of
events (`--max-deliveries` per scenario), so inputs whose offered load is far above
capacity are measured on their first events, and the sustained rate is measured
apart, from a saturating run.

The modules: `scheduler` (Sim, simulated time), `profiles` (the AWS and local
latencies and quotas), `designs` (how market data reaches the fan-out),
`token_bucket` and `tally` (quotas, and what a run used), the simulated
services `dynamodb`, `management_api` (with `deliveries`, which event each frame
carries), `sqs` and `lambda_function`, `scenario` (one run wired around the real
fan-out), `figures` (what a run's outcome says), and the experiments
`validation`, `goals`, `design_comparison` and `grid`; `__main__` runs them and
writes bench/aws-model-results.json.
"""
