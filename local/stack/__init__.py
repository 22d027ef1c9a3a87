"""The whole backend on one machine, built from the cloud assembly that `cdk synth` produces.

What runs locally is what deploys. `LocalStack.start()` (`local_stack`):

1. synthesizes the CDK app (`local.cloud.synth.synthesize`, cached by a hash of its
   inputs, so a warm start does not pay for it) and reads the template;
2. starts moto in server mode and creates every table, queue, bus, rule and
   secret the template declares (`local.cloud.provisioning.provision`);
3. starts the API Gateway emulator (`local.api_gateway`) with the template's
   WebSocket routes, its `$connect` authorizer and identity source, and the
   template's stage, plus the admin HTTP API's routes (`http_routes`);
4. runs every Lambda function of the template (`local.lambda_runtime`) in
   worker processes: its handler string, only its code asset and its layers
   on the import path (the third-party layer installed for this machine from
   the distributions the assembly's layer holds), exactly its template
   environment with Ref/GetAtt/Join/Sub resolved to the local resources and
   the Management API endpoint pointing at the local gateway, its timeout,
   memory size and a concurrency cap (`functions`). Each function's calls to
   AWS go through `local.aws_front_door`, which checks them against the
   function's role policies from the template;
5. cold-starts every function and runs the deploy smoke (`local.smoke`):
   every function is invoked with the samples in `events/` that belong to it.
   A template that would fail on AWS fails here, naming the function and the
   cause;
6. starts the event source mappings (`local.pump`), the scheduled rule's
   sweeper (`event_sources`) and, if asked, the market simulator.

Nothing here names a table, queue, rule, route or function: the template is
the one source.

The modules: `config` (StackConfig, what can be changed), `local_stack`
(LocalStack: start, stop, addresses), `functions` (the template's functions
and their roles), `signing_key` (the access tokens' key), `event_sources`
(queue pumps and the schedule), `http_routes` (admin API, /local/stats,
dashboard), `readiness` (what /ready probes), `in_thread` (BackgroundStack,
for synchronous callers and fixtures), `console_logging` (how the stack's own
components log to the console).
"""
