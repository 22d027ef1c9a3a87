"""The local stack's AWS front door: SigV4, IAM and injected faults in front of moto.

Functions get this server's URL as their AWS endpoint. Every request is

1. recognised: which service (DynamoDB, SQS in its JSON or query protocol,
   EventBridge, Secrets Manager) and which operation;
2. authenticated: its SigV4 signature is recomputed with the secret of the
   access key it claims (`local.sigv4`), for that service and this region;
3. authorised: the IAM action(s) and resource ARN(s) the request needs on AWS
   are derived from its body (per table, index, queue, bus, secret; per item of
   a batch or transaction) and evaluated against the caller's identity policies
   (`local.iam`);
4. optionally failed on purpose, for function principals only, with the
   error AWS itself would return: by targeted rules (`add_fault_rule`: this
   operation, of this function, the next N times or until removed) and at a
   configured rate per service (`configure_faults`);
5. forwarded to moto unchanged, and moto's answer streamed back.

Refusals use each service's real error shape, so botocore raises the same
`ClientError` codes the deployed functions would see. An operation whose
resources the door cannot determine is refused (fail closed) for functions;
the local administrator (provisioning, pumps, simulator, CLI, tests) may call
anything moto serves and is never faulted.

The modules: `server` (AwsFrontDoor), `parsed_request` (step 1),
`required_permissions` (what step 3 evaluates), `faults` (step 4),
`forwarding` (step 5) and `error_responses` (each service's error shapes).

The server runs on its own event loop in its own thread, so the gateway's loop
never waits on moto, and callers (Lambda worker threads, pumps) reach it over
loopback HTTP like any AWS endpoint.
"""
