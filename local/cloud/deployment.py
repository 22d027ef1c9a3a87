"""The local stack's record of a deployed template, and resolution of template values against it.

A `Deployment` holds each logical id's physical id (what Ref returns) and
attributes (what Fn::GetAtt returns) for the resources `provisioning` created
in moto. Resources that run elsewhere locally (functions, roles, log groups,
the APIs) are not created; they get CloudFormation-shaped physical ids and
ARNs so that environments and policies that mention them resolve. The APIs'
ids can be bound to the local gateway, see `Deployment.bind_api`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from local.cloud.intrinsics import Resolver, UnresolvableError
from local.cloud.physical_names import digest_suffix, physical_name, uuid_like
from local.cloud.resources.resource import (
    API,
    EVENT_BUS,
    FUNCTION,
    LAYER,
    PIPE,
    QUEUE,
    ROLE,
    RULE,
    SECRET,
    STAGE,
    TABLE,
    Resource,
    TemplateError,
)
from local.cloud.template import Template

DEFAULT_ACCOUNT = "123456789012"  # moto's default account
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

# The resource types created in moto; every other type gets CloudFormation-shaped values (`_synthetic`).
PROVISIONED = (TABLE, QUEUE, EVENT_BUS, RULE, SECRET)


@dataclass
class Deployment:
    """Each logical id's local physical id and attributes, and resolution of template values against them."""

    template: Template
    region: str
    account: str = DEFAULT_ACCOUNT
    physical_ids: dict[str, str] = field(default_factory=dict)  # Ref of the provisioned resources
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # Fn::GetAtt of the provisioned resources
    api_ids: dict[str, str] = field(default_factory=dict)  # API logical id -> API id
    local_endpoints: dict[str, str] = field(default_factory=dict)  # API logical id -> local base URL

    def __post_init__(self) -> None:
        self._resolver = Resolver(
            ref=self.ref,
            get_att=self.get_att,
            pseudo={
                "AWS::Region": self.region,
                "AWS::AccountId": self.account,
                "AWS::Partition": PARTITION,
                "AWS::URLSuffix": URL_SUFFIX,
                "AWS::StackName": self.template.stack_name,
                "AWS::StackId": (
                    f"arn:{PARTITION}:cloudformation:{self.region}:{self.account}:stack/"
                    f"{self.template.stack_name}/{digest_suffix(self.template.stack_name).lower()}"
                ),
                "AWS::NoValue": "",
            },
            parameters=self.template.document.get("Parameters", {}),
        )

    # -------------------------------------------------------------- the local API Gateway

    def bind_api(self, api_logical_id: str, *, local_base_url: str, api_id: str | None = None) -> None:
        """Point an API's AWS endpoint at the local gateway, e.g. `http://127.0.0.1:8081`.

        Afterwards `function_environment` (and `localize`) turn
        `https://<apiId>.execute-api.<region>.amazonaws.com/<stage>` into `<local_base_url>/<stage>`,
        and the `wss://` form into the `ws://` one. `api_id`, if given, is what Ref of the API
        returns (the gateway's own id, say); otherwise a CloudFormation-shaped id is used.
        """
        self.template.resource(api_logical_id, API)
        if api_id is not None:
            self.api_ids[api_logical_id] = api_id
        self.local_endpoints[api_logical_id] = local_base_url.rstrip("/")

    def execute_api_host(self, api_logical_id: str) -> str:
        return f"{self.ref(api_logical_id)}.execute-api.{self.region}.{URL_SUFFIX}"

    def localize(self, text: str) -> str:
        """`text` with every bound API's AWS endpoint replaced by its local one."""
        for api_logical_id, base in self.local_endpoints.items():
            host = re.escape(self.execute_api_host(api_logical_id))
            socket_base = re.sub(r"^http", "ws", base)
            text = re.sub(rf"https://{host}(?![\w.-])", base, text)
            text = re.sub(rf"wss://{host}(?![\w.-])", socket_base, text)
        return text

    # -------------------------------------------------------------- resolution

    def resolve(self, value: Any) -> Any:
        """A template value with every intrinsic function replaced by its local value."""
        return self._resolver.resolve(value)

    def ref(self, logical_id: str) -> str:
        if logical_id in self.physical_ids:
            return self.physical_ids[logical_id]
        resource = self.template.resource(logical_id)
        if resource.type in PROVISIONED:
            raise UnresolvableError(f"{logical_id} ({resource.type}) is referenced before it is provisioned")
        return self._synthetic(resource)["Ref"]

    def get_att(self, logical_id: str, attribute: str) -> str:
        resource = self.template.resource(logical_id)
        known = self.attributes.get(logical_id)
        if known is None:
            if resource.type in PROVISIONED:
                raise UnresolvableError(f"{logical_id} ({resource.type}) is referenced before it is provisioned")
            known = self._synthetic(resource)
        try:
            return known[attribute]
        except KeyError:
            raise UnresolvableError(
                f"Fn::GetAtt {logical_id}.{attribute} ({resource.type}) has no local value"
            ) from None

    def _arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return f"arn:{PARTITION}:{service}:{self.region if region else ''}:{self.account if account else ''}:{resource}"

    def _synthetic(self, resource: Resource) -> dict[str, str]:
        """CloudFormation-shaped values for a resource that is not created locally."""
        stack, lid, props, kind = self.template.stack_name, resource.logical_id, resource.properties, resource.type
        short_id = digest_suffix(stack, lid).lower()[:10]
        if kind == FUNCTION:
            name = props.get("FunctionName") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("lambda", f"function:{name}")}
        if kind == ROLE:
            name = props.get("RoleName") or physical_name(stack, lid, kind)[:64]
            return {"Ref": name, "Arn": self._arn("iam", f"role/{name}", region=False), "RoleId": "AROA" + short_id}
        if kind == "AWS::Logs::LogGroup":
            name = props.get("LogGroupName") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("logs", f"log-group:{name}:*")}
        if kind == LAYER:
            name = props.get("LayerName") or lid
            return {"Ref": self._arn("lambda", f"layer:{name}:1")}
        if kind == API:
            api_id = self.api_ids.get(lid) or short_id
            scheme = "wss" if props.get("ProtocolType") == "WEBSOCKET" else "https"
            return {
                "Ref": api_id,
                "ApiId": api_id,
                "ApiEndpoint": f"{scheme}://{api_id}.execute-api.{self.region}.{URL_SUFFIX}",
            }
        if kind == STAGE:
            return {"Ref": str(self.resolve(props["StageName"]))}
        if kind == "AWS::CloudWatch::Alarm":
            name = props.get("AlarmName") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("cloudwatch", f"alarm:{name}")}
        if kind == "AWS::SNS::Topic":
            name = props.get("TopicName") or physical_name(stack, lid, kind)
            arn = self._arn("sns", name)
            return {"Ref": arn, "TopicArn": arn, "TopicName": name}
        if kind == PIPE:
            name = props.get("Name") or physical_name(stack, lid, kind)
            return {"Ref": name, "Arn": self._arn("pipes", f"pipe/{name}")}
        if kind == "AWS::KMS::Key":
            key_id = str(uuid_like(stack, lid))
            return {"Ref": key_id, "KeyId": key_id, "Arn": self._arn("kms", f"key/{key_id}")}
        # Routes, integrations, authorizers, policies, permissions...: Ref is an opaque id.
        return {"Ref": short_id}

    # -------------------------------------------------------------- what the local functions need

    def function_environment(self, function_logical_id: str) -> dict[str, str]:
        """The function's template environment, resolved, with bound APIs' endpoints made local."""
        try:
            function = self.template.functions[function_logical_id]
        except KeyError:
            raise TemplateError(f"no function {function_logical_id!r} in the template") from None
        environment = {}
        for name, value in function.environment.items():
            resolved = self.resolve(value)
            if isinstance(resolved, (dict, list)):
                raise UnresolvableError(f"{function_logical_id} variable {name} resolves to {resolved!r}, not text")
            text = ("true" if resolved else "false") if isinstance(resolved, bool) else str(resolved)
            environment[name] = self.localize(text)
        return environment

    def role_policies(self, function_logical_id: str) -> list[dict[str, Any]]:
        """The resolved policy documents of the function's role (inline policies, then attached AWS::IAM::Policy)."""
        return self.role_documents(self.template.functions[function_logical_id].role_logical_id)

    def role_documents(self, role_logical_id: str) -> list[dict[str, Any]]:
        """The resolved policy documents of a role of the template (a function's, a pipe's)."""
        policies = self.template.role_policies(role_logical_id)
        if policies.managed_policy_arns:
            managed = self.resolve(list(policies.managed_policy_arns))
            raise UnresolvableError(
                f"role {role_logical_id} has managed policies {managed}, whose documents the template lacks"
            )
        return [self.resolve(document) for document in policies.documents]

    def outputs(self) -> dict[str, str]:
        """The stack outputs, resolved and localized."""
        return {
            name: self.localize(str(self.resolve(output["Value"])))
            for name, output in self.template.document.get("Outputs", {}).items()
        }
