"""Signed stream names and the Channels groups derived from them.

A page subscribes with ``sign(ref)``: the stream's registered name and JSON arguments,
signed with ``django.core.signing`` (salted by ``TURBO_TASKS["SIGNING_SALT"]``), so a
client can neither forge nor alter it. Workers send to ``group_name(ref)``, a hash of the
same identity: valid on every channel layer, and unguessable without a signed name.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.core import signing

from turbo_tasks import conf
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.jobs import StreamRef

GROUP_PREFIX = "turbo_tasks."


def sign(ref: StreamRef) -> str:
    """The signed, URL-safe name of the stream ``ref``."""
    payload: list[Any] = [ref["stream"], ref["args"]]
    if ref["kwargs"]:
        payload.append(ref["kwargs"])
    return signing.dumps(payload, salt=conf.get("SIGNING_SALT"), compress=True)


def unsign(signed_name: str) -> StreamRef:
    """Verify ``signed_name`` and return the identity it carries, or raise StreamRejected
    (``invalid_signature`` or ``expired``)."""
    try:
        payload = signing.loads(
            signed_name,
            salt=conf.get("SIGNING_SALT"),
            max_age=conf.get("SIGNED_NAME_MAX_AGE"),
        )
    except signing.SignatureExpired:
        raise StreamRejected("expired") from None
    except (signing.BadSignature, ValueError):
        # ValueError covers payloads that decompress or decode badly.
        raise StreamRejected("invalid_signature") from None
    if (
        not isinstance(payload, list)
        or len(payload) not in (2, 3)
        or not isinstance(payload[0], str)
        or not isinstance(payload[1], list)
        or (len(payload) == 3 and not isinstance(payload[2], dict))
    ):
        raise StreamRejected("invalid_signature")
    return {
        "stream": payload[0],
        "args": payload[1],
        "kwargs": payload[2] if len(payload) == 3 else {},
    }


def group_name(ref: StreamRef) -> str:
    """The Channels group of the stream ``ref`` (``turbo_tasks.`` + 40 hex digits)."""
    canonical = json.dumps(
        [ref["stream"], ref["args"], ref["kwargs"]], sort_keys=True, separators=(",", ":")
    )
    return GROUP_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:40]
