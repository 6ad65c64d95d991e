"""Stream identities, signed stream names, the Channels groups derived from them, and
socket ids.

A stream's identity is a :class:`StreamRef`: its registered name and JSON arguments. A page
subscribes with ``sign(ref)``, that identity signed with ``django.core.signing`` (salted by
``TURBO_TASKS["SIGNING_SALT"]``), so a client can neither forge nor alter it. Workers send
to ``group_name(ref)``, a hash of the same identity: valid on every channel layer. A group
name is not a secret (anyone who knows a stream's name and arguments can compute it);
clients never name groups, only signed names.

A socket id (``new_socket_id``) names one websocket to the requests its page makes (the
``X-Turbo-Tasks-Socket`` header), bound by an HMAC to the socket's user so that a request
may name only a socket of its own user.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import zlib
from typing import Any, TypedDict

from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

from turbo_tasks import conf
from turbo_tasks.exceptions import StreamRejected

GROUP_PREFIX = "turbo_tasks."


class StreamRef(TypedDict):
    """A stream's identity as it travels in jobs and signed names."""

    stream: str
    args: list[Any]
    kwargs: dict[str, Any]


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
    except (signing.BadSignature, ValueError, zlib.error):
        # A payload that decodes (ValueError) or decompresses (zlib.error) badly; only a
        # holder of SECRET_KEY can sign one, but it must not crash the consumer.
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


# -- socket ids ----------------------------------------------------------------------------

# What an id from a header may look like to be taken at all: socket ids are ours (URL-safe
# base64), request ids Turbo's UUIDs. Anything else is ignored, so junk never travels in jobs.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A socket id: 22 random URL-safe characters, then 16 hex characters of an HMAC binding
# them to the socket's user.
_SOCKET_SALT = "turbo_tasks.socket"


def token(value: Any) -> str | None:
    """``value`` if it is a well-formed socket or request id, else None."""
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


def new_socket_id(user_pk: Any) -> str:
    """A fresh id for a socket of the user with ``user_pk`` (None: anonymous)."""
    nonce = secrets.token_urlsafe(16)
    return nonce + _socket_mac(nonce, user_pk)


def socket_of(value: Any, user_pk: Any) -> str | None:
    """``value`` if it is the id of a socket of the user with ``user_pk``, else None."""
    if token(value) is None or len(value) != 38:
        return None
    nonce, mac = value[:22], value[22:]
    return value if constant_time_compare(mac, _socket_mac(nonce, user_pk)) else None


def _socket_mac(nonce: str, user_pk: Any) -> str:
    user = "" if user_pk is None else str(user_pk)
    return salted_hmac(_SOCKET_SALT, f"{nonce}|{user}", algorithm="sha256").hexdigest()[:16]
