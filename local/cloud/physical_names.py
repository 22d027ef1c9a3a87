"""Physical names as CloudFormation makes them up, with a digest where CloudFormation puts randomness.

The template's name is used where it gives one (TableName, QueueName, Name);
otherwise `<stack>-<LogicalId>-<SUFFIX>`, with `.fifo` for FIFO queues. The
suffix is where CloudFormation puts randomness; here it is a digest of the
stack, the logical id and the resource's creation request instead. So
provisioning again into the same moto (a restarted stack) finds the same
resources and keeps their data, while a changed declaration (another key
schema, a queue turned FIFO) gets a fresh resource, as a CloudFormation
replacement would, instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
from base64 import b32encode
from typing import Any

from local.cloud.resources.resource import EVENT_BUS, FUNCTION, QUEUE, RULE, SECRET, TABLE

# Longest physical name each service accepts (CloudFormation shortens the stack and logical id parts to fit).
NAME_LIMITS = {TABLE: 255, QUEUE: 80, EVENT_BUS: 256, RULE: 64, SECRET: 512, FUNCTION: 64}
DEFAULT_NAME_LIMIT = 128


def digest_suffix(*parts: Any) -> str:
    """12 characters standing for `parts`: the same parts, the same suffix."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return b32encode(digest).decode()[:12]


def physical_name(stack: str, logical_id: str, resource_type: str, seed: Any = None, *, fifo: bool = False) -> str:
    """`<stack>-<LogicalId>-<SUFFIX>` (`.fifo` appended for FIFO queues), shortened to the service's limit."""
    suffix = digest_suffix(stack, logical_id, seed)
    tail = ".fifo" if fifo else ""
    room = NAME_LIMITS.get(resource_type, DEFAULT_NAME_LIMIT) - len(suffix) - len(tail) - 2
    stack_part = stack[: max(room // 2, room - len(logical_id))]
    logical_part = logical_id[: room - len(stack_part)]
    return f"{stack_part}-{logical_part}-{suffix}{tail}"


def uuid_like(*parts: str) -> str:
    """A UUID-shaped id standing for `parts` (a KMS key id, say)."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
