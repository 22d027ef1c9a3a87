"""Runs Lambda functions locally the way the Lambda service runs them: each in its own worker processes.

A `LambdaFunction` is a handler (`module.attribute`), its code directory, its
layers, its environment and its limits. Every execution environment is a fresh
interpreter (`local.lambda_worker`) started with exactly what Lambda would give
it:

* import path: the code directory (/var/task), each layer's `python/`
  (/opt/python), the packages the Python runtime ships (boto3 and its closure),
  the standard library; nothing from the repository or the virtualenv;
* environment: the function's own variables plus the ones the Lambda runtime
  sets (AWS_REGION, AWS_LAMBDA_FUNCTION_NAME, _HANDLER, TZ, the role's
  credentials, ...); nothing inherited from the process that runs the stack;
* lifecycle: a cold start imports the handler (an import failure is an init
  error naming the function and the cause), warm environments are reused, an
  invocation that overruns its timeout kills its environment and the next one
  starts cold; at most `concurrency` environments exist at once.

The third-party dependency layer of the assembly is built for arm64 Lambda and
cannot run here: `local.deps_layer` makes the stand-in that the local stack
passes as that layer, and provides the runtime's own packages (boto3).

Python callables are also accepted as handlers: they run in threads of this
process. That mode exists for the gateway's and the pumps' own tests, whose
test doubles record calls in the test process; the local stack never uses it.

The modules: `function` (LambdaFunction: configuration, invocation, the
environments' lifecycle), `worker` (one execution environment's process, the
frames it speaks, its log forwarding), `pool` (a function's environments and its
concurrency cap), `in_process` (the callable mode), `environment` (reserved
variables, credentials, the default account and region), `errors` (what an
invocation raises), `preflight` (cold-start every function at start-up).
"""
