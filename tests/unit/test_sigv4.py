"""SigV4 verification against requests that real boto3 clients signed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from local.sigv4 import Credentials, Failure, SignatureError, sign_headers, verify

GOOD = Credentials("AKIDGOOD", "good-secret")
TEMPORARY = Credentials("ASIATEMP", "temp-secret", "session-token-value")
KNOWN = {GOOD.access_key_id: GOOD, TEMPORARY.access_key_id: TEMPORARY}


@dataclass
class Sent:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


def captured(service: str, call: str, credentials: Credentials = GOOD, **params: Any) -> Sent:
    """What a boto3 client puts on the wire for one call (caught just before sending; nothing is sent)."""
    make: Any = boto3.client  # any service by name: the stubs only type literal names
    client = make(
        service,
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:4566",
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.session_token,
        config=Config(retries={"total_max_attempts": 1}),
    )
    sent: list[Sent] = []

    def catch(request: Any, **_: Any) -> AWSResponse:
        split = urlsplit(request.url)
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
        sent.append(Sent(request.method, split.path, split.query, list(request.headers.items()), body))
        raise _Caught

    client.meta.events.register("before-send", catch)
    with pytest.raises(_Caught):
        getattr(client, call)(**params)
    return sent[0]


class _Caught(Exception):
    pass


def check(sent: Sent, service: str, *, now: float | None = None, region: str = "us-east-1") -> Any:
    headers = [(name, value.decode() if isinstance(value, bytes) else value) for name, value in sent.headers]
    headers.append(("Host", "127.0.0.1:4566"))  # added by the HTTP client on the wire
    return verify(
        method=sent.method,
        path=sent.path,
        query=sent.query,
        headers=headers,
        body=sent.body,
        lookup=KNOWN.get,
        service=service,
        region=region,
        now=now,
    )


def refused(sent: Sent, service: str, **kwargs: Any) -> SignatureError:
    with pytest.raises(SignatureError) as error:
        check(sent, service, **kwargs)
    return error.value


def replace_header(sent: Sent, name: str, value: str) -> Sent:
    headers = [(key, value if key.lower() == name.lower() else old) for key, old in sent.headers]
    return Sent(sent.method, sent.path, sent.query, headers, sent.body)


GET_ITEM: dict[str, Any] = {"TableName": "Connections", "Key": {"pk": {"S": "c1"}}}


def test_a_request_signed_with_the_right_key_verifies() -> None:
    # GIVEN a DynamoDB GetItem signed by boto3 with a registered key
    sent = captured("dynamodb", "get_item", **GET_ITEM)
    # WHEN it is verified THEN the signer and scope are reported
    signed = check(sent, "dynamodb")
    assert (signed.access_key_id, signed.region, signed.service) == ("AKIDGOOD", "us-east-1", "dynamodb")


def test_sqs_json_and_management_api_requests_verify() -> None:
    # GIVEN requests of other services, one with a URL-encoded path segment
    sqs = captured("sqs", "send_message", QueueUrl="http://127.0.0.1:4566/123456789012/q", MessageBody="x")
    management = captured("apigatewaymanagementapi", "post_to_connection", ConnectionId="abc+/=", Data=b"hi")
    # THEN both verify for their own service
    assert check(sqs, "sqs").service == "sqs"
    assert check(management, "execute-api").service == "execute-api"


def test_temporary_credentials_need_their_session_token() -> None:
    # GIVEN a request signed with temporary credentials (the token travels, signed)
    sent = captured("dynamodb", "get_item", TEMPORARY, **GET_ITEM)
    assert check(sent, "dynamodb").access_key_id == "ASIATEMP"
    # WHEN the token is swapped for another THEN the key is not recognised
    forged = replace_header(sent, "X-Amz-Security-Token", "another-token")
    assert refused(forged, "dynamodb").failure is Failure.UNKNOWN_KEY
    # AND without a token at all it is not recognised either
    stripped = Sent(
        sent.method, sent.path, sent.query, [h for h in sent.headers if h[0] != "X-Amz-Security-Token"], sent.body
    )
    assert refused(stripped, "dynamodb").failure is Failure.UNKNOWN_KEY


def test_a_wrong_secret_is_a_bad_signature() -> None:
    sent = captured("dynamodb", "get_item", Credentials("AKIDGOOD", "not-the-secret"), **GET_ITEM)
    error = refused(sent, "dynamodb")
    assert error.failure is Failure.BAD_SIGNATURE
    assert error.message.startswith("The request signature we calculated does not match")


def test_an_unknown_key_is_unrecognised() -> None:
    sent = captured("dynamodb", "get_item", Credentials("AKIDNOBODY", "whatever"), **GET_ITEM)
    error = refused(sent, "dynamodb")
    assert (error.failure, error.message) == (
        Failure.UNKNOWN_KEY,
        "The security token included in the request is invalid.",
    )


def test_a_tampered_body_fails() -> None:
    sent = captured("dynamodb", "get_item", **GET_ITEM)
    tampered = Sent(sent.method, sent.path, sent.query, sent.headers, sent.body.replace(b"c1", b"c2"))
    assert refused(tampered, "dynamodb").failure is Failure.BAD_SIGNATURE


def test_a_tampered_signed_header_fails() -> None:
    sent = captured("dynamodb", "get_item", **GET_ITEM)
    tampered = replace_header(sent, "X-Amz-Target", "DynamoDB_20120810.DeleteItem")
    assert refused(tampered, "dynamodb").failure is Failure.BAD_SIGNATURE


def test_a_signature_replayed_on_another_path_fails() -> None:
    # GIVEN a signed post to one connection
    sent = captured("apigatewaymanagementapi", "post_to_connection", ConnectionId="victim-a", Data=b"hi")
    # WHEN the same headers and body are sent to another connection's path THEN it fails
    replayed = Sent(sent.method, sent.path.replace("victim-a", "victim-b"), sent.query, sent.headers, sent.body)
    assert refused(replayed, "execute-api").failure is Failure.BAD_SIGNATURE


def test_a_body_that_does_not_match_its_signed_content_hash_fails() -> None:
    # GIVEN a request whose X-Amz-Content-SHA256 header is signed (botocore then signs that header, not the body)
    url = "http://127.0.0.1:4566/"
    headers = sign_headers(
        "POST", url, GOOD, service="dynamodb", region="us-east-1", body=b"{}",
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )  # fmt: skip
    sent = Sent("POST", "/", "", list(headers.items()), b'{"TableName": "other"}')
    # THEN a body that does not hash to it is refused
    assert refused(sent, "dynamodb").failure is Failure.BAD_SIGNATURE


def test_wrong_service_or_region_scope_fails() -> None:
    sent = captured("dynamodb", "get_item", **GET_ITEM)
    assert refused(sent, "sqs").failure is Failure.WRONG_SCOPE
    assert refused(sent, "dynamodb", region="eu-west-1").failure is Failure.WRONG_SCOPE


def test_a_clock_skew_over_15_minutes_fails_both_ways() -> None:
    sent = captured("dynamodb", "get_item", **GET_ITEM)
    now = time.time()
    assert check(sent, "dynamodb", now=now + 14 * 60).service == "dynamodb"
    late = refused(sent, "dynamodb", now=now + 16 * 60)
    assert late.failure is Failure.EXPIRED and late.message.startswith("Signature expired:")
    early = refused(sent, "dynamodb", now=now - 16 * 60)
    assert early.failure is Failure.EXPIRED and early.message.startswith("Signature not yet current:")


def test_missing_and_malformed_authorization() -> None:
    sent = captured("dynamodb", "get_item", **GET_ITEM)
    unsigned = Sent(sent.method, sent.path, sent.query, [h for h in sent.headers if h[0] != "Authorization"], sent.body)
    assert refused(unsigned, "dynamodb").failure is Failure.MISSING
    # A forged header with the right prefix but no signature is incomplete, not accepted
    forged = replace_header(sent, "Authorization", "AWS4-HMAC-SHA256 Credential=AKIDGOOD/20240101/us-east-1/dynamodb")
    assert refused(forged, "dynamodb").failure is Failure.INCOMPLETE
