"""Each service's own error shapes, so botocore raises the `ClientError` codes the deployed functions would see."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from local.aws_front_door.parsed_request import ParsedRequest
from local.sigv4 import Failure, SignatureError

DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"
CORAL_ERROR = "com.amazon.coral.service#"

# How each signature failure is answered: JSON services (DynamoDB, EventBridge, Secrets Manager) with
# coral's types and 400 (403 for an unknown key is what the query services say); SQS as the query API.
_JSON_SIGNATURE_ERRORS = {
    Failure.MISSING: (400, "MissingAuthenticationTokenException"),
    Failure.INCOMPLETE: (400, "IncompleteSignatureException"),
    Failure.UNKNOWN_KEY: (400, "UnrecognizedClientException"),
    Failure.EXPIRED: (400, "InvalidSignatureException"),
    Failure.WRONG_SCOPE: (400, "InvalidSignatureException"),
    Failure.BAD_SIGNATURE: (400, "InvalidSignatureException"),
}
_QUERY_SIGNATURE_ERRORS = {
    Failure.MISSING: (403, "MissingAuthenticationToken"),
    Failure.INCOMPLETE: (400, "IncompleteSignature"),
    Failure.UNKNOWN_KEY: (403, "InvalidClientTokenId"),
    Failure.EXPIRED: (403, "SignatureDoesNotMatch"),
    Failure.WRONG_SCOPE: (403, "SignatureDoesNotMatch"),
    Failure.BAD_SIGNATURE: (403, "SignatureDoesNotMatch"),
}

# DynamoDB's CancellationReasons codes and their messages.
CANCELLATION_MESSAGES = {
    "None": None,
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically "
    "scaling your table or index so please try again shortly. If exceptions persist, check if you have a hot key.",
    "ProvisionedThroughputExceeded": "The level of configured provisioned throughput for the table was exceeded.",
    "ConditionalCheckFailed": "The conditional request failed",
    "ItemCollectionSizeLimitExceeded": "Collection size exceeded.",
    "ValidationError": "One or more parameter values were invalid.",
}


def _request_id() -> str:
    raw = os.urandom(16).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def json_error(
    status: int,
    error_type: str,
    message: str,
    *,
    content_type: str = "application/x-amz-json-1.0",
    extra: Mapping[str, Any] | None = None,
    message_key: str = "message",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    document: dict[str, Any] = {"__type": error_type, message_key: message}
    document.update(extra or {})
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        headers={"Content-Type": content_type, "x-amzn-RequestId": _request_id(), **(headers or {})},
    )


def query_error(status: int, code: str, message: str, *, sender: bool = True) -> web.Response:
    request_id = _request_id()
    kind = "Sender" if sender else "Receiver"
    document = (
        '<?xml version="1.0"?><ErrorResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
        f"<Error><Type>{kind}</Type><Code>{code}</Code><Message>{_xml_escape(message)}</Message><Detail/></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(
        status=status, body=document.encode(), headers={"Content-Type": "text/xml", "x-amzn-RequestId": request_id}
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def sqs_json_error(status: int, code: str, message: str, *, sender: bool = True) -> web.Response:
    # SQS's JSON protocol is query-compatible: botocore takes the code from x-amzn-query-error.
    return json_error(
        status,
        f"com.amazonaws.sqs#{code}",
        message,
        headers={"x-amzn-query-error": f"{code};{'Sender' if sender else 'Receiver'}"},
    )


def signature_error(service: str, protocol: str, error: SignatureError) -> web.Response:
    if service == "sqs":
        status, code = _QUERY_SIGNATURE_ERRORS[error.failure]
        if protocol == "query":
            return query_error(status, code, error.message)
        return sqs_json_error(status, code, error.message)
    status, code = _JSON_SIGNATURE_ERRORS[error.failure]
    return json_error(status, CORAL_ERROR + code, error.message)


def access_denied(parsed: ParsedRequest, message: str) -> web.Response:
    if parsed.service == "dynamodb":
        return json_error(400, DYNAMODB_ERROR + "AccessDeniedException", message)
    if parsed.service == "sqs":
        if parsed.protocol == "query":
            return query_error(403, "AccessDenied", message)
        return sqs_json_error(403, "AccessDenied", message)
    # EventBridge and Secrets Manager speak JSON 1.1 and capitalise Message.
    return json_error(
        400, "AccessDeniedException", message, content_type="application/x-amz-json-1.1", message_key="Message"
    )


def validation_error(parsed: ParsedRequest, message: str) -> web.Response:
    if parsed.service == "dynamodb":
        return json_error(400, CORAL_ERROR + "ValidationException", message)
    if parsed.service == "sqs":
        if parsed.protocol == "query":
            return query_error(400, "InvalidParameterValue", message)
        return sqs_json_error(400, "InvalidParameterValue", message)
    return json_error(400, "ValidationException", message, content_type="application/x-amz-json-1.1")


def transaction_canceled(parsed: ParsedRequest, codes: tuple[str, ...]) -> web.Response:
    """DynamoDB's TransactionCanceledException: one reason per item, `codes` in order, "None" for the rest."""
    entries = parsed.params.get("TransactItems")
    size = len(entries) if isinstance(entries, list) and entries else 1
    reasons: list[dict[str, str]] = []
    for index in range(size):
        code = codes[index] if index < len(codes) else "None"
        message = CANCELLATION_MESSAGES.get(code)
        reasons.append({"Code": code, "Message": message} if message else {"Code": code})
    listed = ", ".join(reason["Code"] for reason in reasons)
    return json_error(
        400,
        DYNAMODB_ERROR + "TransactionCanceledException",
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{listed}]",
        message_key="Message",
        extra={"CancellationReasons": reasons},
    )
