"""The local stack's resources, from the cloud assembly `cdk synth` produces.

assembly = synthesize({"stage_name": "prod"})          # synth: cached under .build/assembly/<key>/
template = assembly.template                             # typed views: tables, queues, rules, functions, apis...
deployment = provision(template, Clients.from_factory(moto.client), secret_values={...})
deployment.bind_api(template.websocket_api.logical_id, local_base_url="http://127.0.0.1:8081")
deployment.function_environment(function_logical_id)     # the template environment, resolved
deployment.role_policies(function_logical_id)            # the role's policy documents, resolved

The modules: `synth` (running the CDK app, cached), `assembly` (the cloud
assembly and its stack templates), `template` (one stack's resources and their
views), `resources` (the views, one module per service), `intrinsics`
(resolving Ref, Fn::GetAtt, Fn::Join, Fn::Sub ...), `pipe_paths` (the paths and
templates of EventBridge Pipes), `provisioning` (`provision`: the tables, queues,
bus, rules and secrets created in moto), `deployment` (`Deployment`: physical ids
and attributes, resolution, the functions' environments and role documents),
`physical_names` (names as CloudFormation makes them up), `__main__`
(`python -m local.cloud`: synthesis and provisioning timed).
"""
