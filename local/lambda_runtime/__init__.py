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
  error naming the function and the cause), warm environments are reused (the
  most recently used first) and shut down after a while without an invocation
  (`pool`), an invocation that overruns its timeout kills its environment and
  the next one starts cold; at most `concurrency` environments exist at once.

A cold start does not start an interpreter, though: it forks one. Each function
configuration has a template (`template`), an interpreter started exactly as an
environment would be (same flags, import path, environment but for the log
stream name, working directory, its own session), which imports nothing of the
function's own code. A cold start hands it the new environment's variables and
pipes; it forks, and the child, in a session of its own, takes those variables
as its whole environment and runs the init phase: the handler module's import,
with its errors, its 10 s limit and its module state, per environment. What the
template saves is the rest: before forking it imports what earlier environments
of the configuration imported from the layers, the runtime's packages and the
standard library (each environment reports it after its init phase and after its
first invocation), so boto3, botocore's client machinery, Powertools, pydantic
and the shared package are imported once per configuration. The real `$connect`
handler's cold start (init and first invocation, with its three boto3 clients)
went from 0.64 s to 0.10 s of CPU (`python -m bench.lambda_cold_start`).

The template never forks a thread or a socket into an environment: if what it
imported started one, it refuses, and that configuration's environments are
started as fresh interpreters (a warning says so). Nor does it create boto3
clients or load botocore's models: botocore keeps those per session, so each
environment creates its clients and reads its models as on AWS (about 0.07 s of
CPU for three clients). An environment is still its own process (a pid, killed
on timeout, its exit status reported by the template that reaps it, its memory
counted by process); if the template dies, its environments die with it and the
next cold start starts another template.

The third-party dependency layer of the assembly is built for arm64 Lambda and
cannot run here: `local.deps_layer` makes the stand-in that the local stack
passes as that layer, and provides the runtime's own packages (boto3).

Python callables are also accepted as handlers: they run in threads of this
process. That mode exists for the gateway's and the pumps' own tests, whose
test doubles record calls in the test process; the local stack never uses it.

The modules: `function` (LambdaFunction: configuration, invocation, the
environments' lifecycle), `worker` (one execution environment's process, the
frames it speaks, its log forwarding), `template` (the interpreter a
configuration's environments are forked from), `pool` (a function's
environments, its template and its concurrency cap), `in_process` (the callable mode), `environment` (reserved
variables, credentials, the default account and region), `errors` (what an
invocation raises), `preflight` (cold-start every function at start-up).
"""
