"""A local stand-in for one stage of an API Gateway WebSocket API.

One server on one port plays both halves of the managed service:

* the WebSocket endpoint clients connect to (`ws://host:port/`), with the
  `$connect` REQUEST authorizer, the `$connect` / `$disconnect` / message routes
  selected by `$request.body.action`, and API Gateway's limits and close codes;
* the Management API (`POST|GET|DELETE /@connections/{id}`, with or without the
  stage prefix) that boto3's `apigatewaymanagementapi` client talks to, with
  API Gateway's error shapes (410 Gone, 413, 429, 403), and faults injected on
  purpose where API Gateway would produce them (`add_management_fault`: 429
  LimitExceededException, 500 or a delay, for some connections or all, the next
  N calls or until removed; `configure_management_faults`: a share of all calls).

Handlers run as Lambda functions do: in thread pools sized like their
concurrency (see `local.lambda_runtime`), receiving the same event shapes and
context objects they get on AWS. Handler code cannot tell the two apart; only
endpoint URLs differ.

The modules, one concern each:

* `server`: `LocalGateway`, the stage's aiohttp app: its routes, start and stop;
* `config`: `GatewayConfig`, the stage's settings (API Gateway's quotas by default);
* `websocket_stage`: the handshake, frames to routes, closing and `$disconnect`;
* `authorizer`: the `$connect` REQUEST authorizer call and its policy answer;
* `connection`: what the stage knows about one connection;
* `connection_timers`: the idle timeout and the maximum connection duration;
* `lambda_events`: the event shapes and ids the routes' functions receive;
* `management_api`: `POST|GET|DELETE @connections/{id}`, signed and authorised;
* `management_fast_path`: every connection's first stop; answers plain Management API calls
  without aiohttp's request machinery and hands anything else to aiohttp;
* `management_faults`: faults injected into Management API calls on purpose;
* `error_responses`: API Gateway's error answers (handshake refusals, Management API errors);
* `throttle`: the token bucket API Gateway throttles with;
* `frame_size_limit`: the 32 KB frame limit, in front of aiohttp's WebSocket parser;
* `health`: `/health` and `/ready`;
* `access_log`: access logs without secrets.

Choices where API Gateway's behaviour is not documented precisely:

* Frames of one connection are dispatched to the function's pool in arrival
  order, but run concurrently, as Lambda invocations do; nothing serialises them.
* Only data frames from the client count as activity for the idle timeout and
  `lastActiveAt`; control frames are answered but keep nothing alive (AWS's
  advice is to keep connections alive with messages), and posts to the client
  do not count either.
* Close codes: idle timeout, maximum duration and server shutdown close with
  1001 "Going away"; `DELETE @connections` closes with 1000; oversized frames or
  messages with 1009. `$disconnect` reports the code the connection ended with:
  the client's own code, 1005 when its close frame carried none, 1006 when the
  TCP connection died without a close frame.
* Authorizer context values are stringified ("true", "1") before they reach the
  route events, as API Gateway does; nested values fail the handshake with 500.
"""
