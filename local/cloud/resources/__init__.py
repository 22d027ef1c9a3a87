"""Typed, read-only views of the resources of a synthesized CloudFormation template, one module per service.

Values that CloudFormation resolves at deploy time (Ref, Fn::GetAtt, Fn::Join ...)
are kept as they are in the template; `local.cloud.deployment.Deployment.resolve`
turns them into local physical values. Where a view needs to know *which*
resource a value points at (a rule target's queue, a route's function), it
follows the Ref or Fn::GetAtt to a logical id.

The modules: `resource` (the raw resource, the type names, `TemplateError`,
reference following), `dynamodb` (tables), `sqs` (queues), `eventbridge` (buses
and rules), `secrets_manager` (secrets and their generation spec),
`lambda_functions` (functions and event source mappings), `iam` (a role's
policy documents), `pipes` (EventBridge Pipes), `api_gateway` (the WebSocket
and HTTP APIs with their routes and authorizers). `local.cloud.template.Template`
holds the views of one stack.
"""
