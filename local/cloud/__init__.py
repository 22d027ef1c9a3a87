"""The local stack's resources, from the cloud assembly `cdk synth` produces.

assembly = synthesize({"stage_name": "prod"})          # cached under .build/assembly/<key>/
template = assembly.template                             # typed views: tables, queues, rules, functions, apis...
deployment = provision(template, Clients.from_factory(moto.client), secret_values={...})
deployment.bind_api(template.websocket_api.logical_id, local_base_url="http://127.0.0.1:8081")
deployment.function_environment(function_logical_id)     # the template environment, resolved
deployment.role_policies(function_logical_id)            # the role's policy documents, resolved
"""

from local.cloud.deploy import Clients, Deployment, ProvisioningError, physical_name, provision
from local.cloud.intrinsics import UnresolvableError
from local.cloud.synth import SynthesisError, assembly_key, synthesize
from local.cloud.template import CloudAssembly, Template, TemplateError

__all__ = [
    "Clients",
    "CloudAssembly",
    "Deployment",
    "ProvisioningError",
    "SynthesisError",
    "Template",
    "TemplateError",
    "UnresolvableError",
    "assembly_key",
    "physical_name",
    "provision",
    "synthesize",
]
