"""The client of API Gateway's Management API: `client.ManagementApiGateway`, the ConnectionGateway on AWS.

`POST/GET/DELETE {endpoint}/@connections/{connectionId}`, signed with SigV4 for
`execute-api`. The same client talks to the local gateway emulator: only the
endpoint differs.

Why not boto3's `post_to_connection` once per message (the pattern in AWS's
samples): every call walks botocore's whole request pipeline (parameter
validation, serialisation, event hooks, endpoint rules, signing through
AWSRequest objects, urllib3, response parsing), several hundred microseconds
of CPU per message (bench/delivery_worker.py measures both). Fan-out is billed
by Lambda duration, and a market tick may go to thousands of connections, so
the client here does only what the wire needs:

* SigV4 computed directly with hashlib/hmac; the derived signing key is cached
  per (secret, date), so a message costs two SHA-256 and one HMAC.
* HTTP/1.1 keep-alive on a pool of persistent connections, driven by asyncio
  protocol callbacks with no task or future per request: when a response
  arrives, the next request goes out on the same connection from inside the
  read callback.
* The event loop and the pool live on the instance, so warm Lambda invocations
  reuse the TLS connections instead of paying handshakes again.

The measurement that kept it (bench/delivery_clients.py, bench/README.md):
this client against aiohttp with the same signer and botocore on a thread pool,
same machine, same concurrency.

The modules, each one concern:

* `sigv4`: the signature (and the credentials it needs).
* `http_connection`: one keep-alive HTTP/1.1 connection and its response parser.
* `connection_pool`: the persistent connections to the endpoint.
* `retry`: when a failed call goes again (full-jitter backoff; throttling until a deadline).
* `call_batch`: a batch of calls through the pool to their outcomes.
* `client`: the ConnectionGateway itself: requests signed, the event loop driven, outcomes reported.

Importing any of them is cheap (no asyncio, ssl or botocore until first use),
because cold start matters for every function that only constructs a gateway.
"""
