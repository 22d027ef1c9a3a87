"""SigV4 verification and signing, held to botocore's SigV4Auth: requests real boto3 clients signed, and many varied
requests botocore signed directly."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
import pytest
from aiohttp.test_utils import make_mocked_request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.utils import percent_encode_sequence
from multidict import CIMultiDict

from local.principals import Principals
from local.signed_http import authenticate
from local.sigv4 import (
    Credentials,
    Failure,
    SignatureError,
    canonical_query,
    canonical_uri,
    sign_headers,
    verify,
)

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


# ------------------------------------------------------------------ equivalence with botocore's SigV4Auth

SIGNED_AT = datetime(2026, 3, 4, 5, 6, 7)  # botocore's clock (naive UTC) while it signs the cases below
SIGNED_AT_EPOCH = SIGNED_AT.replace(tzinfo=UTC).timestamp()
HOST = "127.0.0.1:4566"


@dataclass(frozen=True)
class Case:
    """One request to sign: the path and query exactly as they go on the wire."""

    name: str
    service: str
    method: str = "POST"
    path: str = "/"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    credentials: Credentials = GOOD
    region: str = "us-east-1"


def _json(target: str, document: dict[str, Any], version: str = "1.0") -> dict[str, Any]:
    return {
        "headers": (("X-Amz-Target", target), ("Content-Type", f"application/x-amz-json-{version}")),
        "body": json.dumps(document).encode(),
    }


def _query(pairs: list[tuple[str, Any]]) -> str:
    encode: Any = percent_encode_sequence  # takes pairs too (repeated names); its stubs say Mapping only
    return str(encode(pairs))  # how botocore's query serializer puts parameters on the wire


CASES = [
    Case("dynamodb GetItem", "dynamodb", **_json("DynamoDB_20120810.GetItem", GET_ITEM)),
    Case(
        "dynamodb Query, temporary credentials",
        "dynamodb",
        credentials=TEMPORARY,
        **_json(
            "DynamoDB_20120810.Query",
            {
                "TableName": "Subscriptions",
                "KeyConditionExpression": "pk = :s",
                "ExpressionAttributeValues": {":s": {"S": "market_data:AAPL ✓"}},
            },
        ),
    ),
    Case("dynamodb in another region", "dynamodb", region="eu-west-1", **_json("DynamoDB_20120810.PutItem", {})),
    Case(
        "sqs JSON SendMessage",
        "sqs",
        **_json("AmazonSQS.SendMessage", {"QueueUrl": f"http://{HOST}/123456789012/q", "MessageBody": "x  y"}),
    ),
    Case(
        "sqs query protocol in the body",
        "sqs",
        headers=(("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),),
        body=_query(
            [("Action", "SendMessage"), ("QueueUrl", f"http://{HOST}/123456789012/q"), ("MessageBody", "a+b c~/é")]
        ).encode(),
    ),
    Case(
        "sqs query protocol in the URL: repeated, unsorted, empty and encoded values",
        "sqs",
        method="GET",
        path="/123456789012/q",
        query=_query(
            [
                ("Action", "ReceiveMessage"),
                ("MessageAttributeName", ["zeta", "alpha", "Alpha", ""]),
                ("AttributeName.1", "All"),
                ("Empty", ""),
                ("Odd key+/=~", "value with spaces+plus/slash=equals~tilde&amp%25"),
                ("Unicode", "ünï ✓"),
            ]
        ),
    ),
    Case("a query name without '='", "sqs", method="GET", path="/q", query="flag&b=2&a="),
    Case(
        "Management API post, '=' in the connection id",
        "execute-api",
        path="/@connections/" + quote("bench-00001=", safe=""),
        body=b'{"message_type":"market_data"}',
    ),
    Case(
        "Management API post under a stage, every id character",
        "execute-api",
        path="/prod/@connections/" + quote("Ab+/=Cd", safe=""),
        body=b"hi",
    ),
    Case("Management API GET", "execute-api", method="GET", path="/@connections/" + quote("x=", safe="")),
    Case("Management API DELETE", "execute-api", method="DELETE", path="/@connections/abc"),
    Case("a space encoded on the wire", "execute-api", method="GET", path="/a%20b/c"),
    Case("a space as the signer saw it", "execute-api", method="GET", path="/a b/c d"),
    Case("unicode encoded on the wire", "execute-api", method="GET", path="/caf%C3%A9/%E2%9C%93"),
    Case("unicode as the signer saw it", "execute-api", method="GET", path="/café/✓"),
    Case("an encoded slash", "execute-api", method="PUT", path="/a%2Fb/c", body=b"{}"),
    Case("plus, tilde and reserved characters", "execute-api", method="PATCH", path="/a+b/~user/x!$&'()*,;:@"),
    Case("dot segments and repeated slashes", "execute-api", method="GET", path="/a/./b/../c//d/"),
    Case("a trailing slash", "execute-api", method="GET", path="/admin/connections/"),
    Case(
        "headers with runs of spaces, tabs, and repeated values",
        "execute-api",
        method="GET",
        path="/admin/stats",
        headers=(
            ("X-Custom", "  leading and   inner \t spaces  "),
            ("X-Repeated", "one"),
            ("x-repeated", "two   three"),
            ("Accept", "application/json"),
            ("Content-Type", "text/plain;   charset=utf-8"),
        ),
    ),
    Case("a binary body", "execute-api", path="/@connections/abc", body=bytes(range(256)) * 3),
    Case(
        "a signed X-Amz-Content-SHA256 that matches the body",
        "dynamodb",
        headers=(("X-Amz-Content-SHA256", hashlib.sha256(b'{"a": 1}').hexdigest()),),
        body=b'{"a": 1}',
    ),
]


def botocore_signed(case: Case, *, params: Any = None) -> Sent:
    """The case signed by botocore's SigV4Auth at SIGNED_AT, as it then arrives (with the Host header).

    `params` (pairs, repeats allowed) are signed from botocore's own encoding of them instead of the URL's query.
    """
    url = f"http://{HOST}{case.path}" + (f"?{case.query}" if case.query else "")
    request = AWSRequest(method=case.method, url=url, data=case.body, params=params)
    for name, value in case.headers:
        request.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    credentials = case.credentials
    signer = SigV4Auth(
        ReadOnlyCredentials(credentials.access_key_id, credentials.secret_key, credentials.session_token),
        case.service,
        case.region,
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        signer.add_auth(request)
    headers = [*request.headers.items(), ("Host", HOST)]
    return Sent(case.method, case.path, case.query, headers, case.body)


def verifies(sent: Sent, case: Case) -> Any:
    return verify(
        method=sent.method,
        path=sent.path,
        query=sent.query,
        headers=sent.headers,
        body=sent.body,
        lookup=KNOWN.get,
        service=case.service,
        region=case.region,
        now=SIGNED_AT_EPOCH + 30,
    )


def refusal(sent: Sent, case: Case) -> Failure:
    with pytest.raises(SignatureError) as error:
        verifies(sent, case)
    return error.value.failure


def one_byte_changed(text: str) -> str:
    """`text` with its last ASCII letter or digit replaced by another (an 'x' appended when it has none)."""
    for index in range(len(text) - 1, -1, -1):
        if text[index].isascii() and text[index].isalnum():
            replacement = "b" if text[index] == "a" else "a"
            return text[:index] + replacement + text[index + 1 :]
    return text + "x"


def signed_names(sent: Sent) -> list[str]:
    authorization = next(value for name, value in sent.headers if name == "Authorization")
    return authorization.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_what_botocore_signs_verifies(case: Case) -> None:
    # GIVEN a request signed by botocore's own SigV4Auth
    sent = botocore_signed(case)
    # WHEN it is verified THEN it holds, for the signer's key and scope
    signed = verifies(sent, case)
    assert (signed.access_key_id, signed.region, signed.service) == (
        case.credentials.access_key_id,
        case.region,
        case.service,
    )
    assert signed.signed_at == SIGNED_AT.replace(tzinfo=UTC)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_one_byte_changed_anywhere_signed_is_refused(case: Case) -> None:
    # GIVEN a request botocore signed
    sent = botocore_signed(case)
    authorization = next(value for name, value in sent.headers if name == "Authorization")
    last = authorization[-1]
    forged_signature = authorization[:-1] + ("0" if last != "0" else "1")
    # WHEN one byte changes in the signature, the path, the query or the body THEN the signature no longer holds
    variants = {
        "signature": replace_header(sent, "Authorization", forged_signature),
        "path": Sent(sent.method, one_byte_changed(sent.path), sent.query, sent.headers, sent.body),
        "query": Sent(sent.method, sent.path, one_byte_changed(sent.query), sent.headers, sent.body),
        "body": Sent(sent.method, sent.path, sent.query, sent.headers, _flip_last_byte(sent.body)),
        "method": Sent("PUT" if sent.method != "PUT" else "POST", sent.path, sent.query, sent.headers, sent.body),
    }
    # AND in any signed header but the date and the token (their own checks answer for those, below)
    for name in signed_names(sent):
        if name in ("x-amz-date", "x-amz-security-token"):
            continue
        index = max(i for i, (key, _) in enumerate(sent.headers) if key.lower() == name)
        headers = list(sent.headers)
        headers[index] = (headers[index][0], one_byte_changed(headers[index][1]))
        variants[f"header {name}"] = Sent(sent.method, sent.path, sent.query, headers, sent.body)
    failures = {what: refusal(variant, case) for what, variant in variants.items()}
    assert failures == dict.fromkeys(variants, Failure.BAD_SIGNATURE)


def _flip_last_byte(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 1]) if body else b"x"


def test_the_date_and_the_token_are_signed_too() -> None:
    # GIVEN a request signed with temporary credentials
    case = next(case for case in CASES if case.credentials is TEMPORARY)
    sent = botocore_signed(case)
    date = next(value for name, value in sent.headers if name == "X-Amz-Date")
    # WHEN its date moves by one second THEN the signature does not hold
    moved = replace_header(sent, "X-Amz-Date", date[:-3] + f"{(int(date[-3:-1]) + 1) % 60:02d}Z")
    assert refusal(moved, case) is Failure.BAD_SIGNATURE
    # WHEN its token changes by one byte THEN the key is not recognised
    token = next(value for name, value in sent.headers if name == "X-Amz-Security-Token")
    assert refusal(replace_header(sent, "X-Amz-Security-Token", one_byte_changed(token)), case) is Failure.UNKNOWN_KEY


def test_an_unsigned_payload_is_refused_as_before() -> None:
    # GIVEN a request botocore signed with UNSIGNED-PAYLOAD (HTTPS, payload signing off), the body not covered
    case = Case("unsigned payload", "dynamodb", **_json("DynamoDB_20120810.GetItem", GET_ITEM))
    request = AWSRequest(method="POST", url=f"https://{HOST}/", data=case.body)
    for name, value in case.headers:
        request.headers[name] = value
    request.context["payload_signing_enabled"] = False
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        SigV4Auth(ReadOnlyCredentials(GOOD.access_key_id, GOOD.secret_key, None), "dynamodb", "us-east-1").add_auth(
            request
        )
    assert request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    sent = Sent("POST", "/", "", [*request.headers.items(), ("Host", HOST)], case.body)
    # THEN it is refused: every caller of the local stack signs its payload, so fail closed
    assert refusal(sent, case) is Failure.BAD_SIGNATURE


def test_a_query_arriving_in_another_encoding_verifies_against_its_canonical_form() -> None:
    # GIVEN botocore signing parameters (it encodes them itself) and a wire query that encodes them differently
    params = [("b", "x y"), ("a", "~/+"), ("a", "é")]
    case = Case("query", "sqs", method="GET", path="/q", query="b=x%20y&a=%7e%2f%2B&a=%C3%A9")
    sent = botocore_signed(case, params=params)
    # THEN the verifier decodes and re-encodes each name and value before sorting, as AWS does
    assert canonical_query(case.query) == "a=%C3%A9&a=~%2F%2B&b=x%20y"
    assert verifies(sent, case).service == "sqs"


def test_canonical_forms() -> None:
    # The path is encoded again (so %3D becomes %253D), '/' and unreserved characters stay as they are
    assert canonical_uri("/@connections/abc%3D") == "/%40connections/abc%253D"
    assert canonical_uri("/a b/~x/./y/../z//") == "/a%20b/~x/z/"
    assert canonical_uri("") == "/"
    # Query pairs sort by name, then value; a bare name gets an empty value
    assert canonical_query("b=2&a=2&a=1&c") == "a=1&a=2&b=2&c="


# ------------------------------------------------------------------ sign_headers against botocore

SIGNING_CASES = [
    ("POST", f"http://{HOST}/", {"X-Amz-Target": "DynamoDB_20120810.GetItem"}, b'{"TableName": "t"}', GOOD),
    ("POST", f"http://{HOST}/", {"X-Amz-Target": "secretsmanager.DescribeSecret"}, b"{}", TEMPORARY),
    ("GET", f"http://{HOST}/admin/stats?" + _query([("z", "1"), ("a", ["2", "1"]), ("e", "")]), {}, b"", GOOD),
    ("POST", f"http://{HOST}/prod/@connections/" + quote("a+/=", safe=""), {}, b"hello", GOOD),
    ("GET", "http://LocalHost:80/caf%C3%A9/a%2Fb/~x", {"Accept": "application/json"}, b"", GOOD),
    ("GET", "https://example.com:443/a b", {"User-Agent": "not signed", "X-Spaces": " a   b "}, b"", GOOD),
    ("PUT", "http://[::1]:4566/x", {"Host": "explicit.host:1", "Authorization": "old", "X-Amz-Date": "old"}, b"", GOOD),
    ("DELETE", "https://[::1]/@connections/c1", {"X-Amz-Security-Token": "stale"}, b"", TEMPORARY),
    ("POST", f"http://{HOST}/", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}, b"ignored", GOOD),
]


@pytest.mark.parametrize("method, url, headers, body, credentials", SIGNING_CASES)
def test_sign_headers_is_what_botocore_adds(
    method: str, url: str, headers: dict[str, str], body: bytes, credentials: Credentials
) -> None:
    # GIVEN botocore signing a request at a known time
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    if credentials.session_token:
        request.headers["X-Amz-Security-Token"] = credentials.session_token
    frozen = ReadOnlyCredentials(credentials.access_key_id, credentials.secret_key, credentials.session_token)
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        SigV4Auth(frozen, "execute-api", "eu-west-1").add_auth(request)
    # WHEN sign_headers signs the same request at the same time
    ours = sign_headers(
        method, url, credentials, service="execute-api", region="eu-west-1", body=body, headers=headers,
        now=SIGNED_AT_EPOCH,
    )  # fmt: skip
    # THEN the headers, their values and their order are botocore's
    assert list(ours.items()) == list(request.headers.items())


def test_sign_headers_refuses_a_date_header() -> None:
    with pytest.raises(ValueError, match="X-Amz-Date"):
        sign_headers("GET", f"http://{HOST}/", GOOD, service="s", region="r", headers={"Date": "today"})


def test_the_gateway_verifies_the_query_as_it_was_sent_not_as_aiohttp_decodes_it() -> None:
    # GIVEN a signed admin call whose query carries encoded characters (aiohttp's `query_string` decodes them)
    principals = Principals("123456789012")
    query = _query([("cursor", "a b&next=%41"), ("limit", "10")])
    url = f"http://{HOST}/admin/connections?{query}"
    headers = sign_headers("GET", url, principals.admin.credentials, service="execute-api", region="us-east-1")
    request = make_mocked_request("GET", f"/admin/connections?{query}", headers=CIMultiDict({**headers, "Host": HOST}))
    assert request.query_string != query  # what the gateway must not sign over
    # WHEN the gateway authenticates it THEN the signer is the administrator
    assert authenticate(request, b"", principals, region="us-east-1") is principals.admin
