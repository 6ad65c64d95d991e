"""Signed stream names (what a page subscribes with), the Channels groups derived from a
stream's identity, and socket ids (what a page's requests name their socket with)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

import pytest
from django.conf import settings
from django.core import signing as django_signing
from django.test import override_settings

from tests.otherapp.streams import AnnouncementStream
from tests.testapp.models import Message, Room
from tests.testapp.streams import NotificationStream
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.signing import (
    StreamRef,
    group_name,
    new_socket_id,
    sign,
    socket_of,
    token,
    unsign,
)

SALT = "turbo_tasks.stream"  # TURBO_TASKS["SIGNING_SALT"]'s default
SIGNED_AT = 1_800_000_000  # a second to sign at, so a test can move the clock past it


@contextmanager
def clock_at(seconds: float) -> Iterator[None]:
    """Django's signing reads the time from here: a signed name embeds the second it was
    made, and its age is measured against it."""
    with patch("django.core.signing.time.time", return_value=seconds):
        yield


def rejected(signed_name: str) -> str:
    with pytest.raises(StreamRejected) as excinfo:
        unsign(signed_name)
    assert str(excinfo.value) == excinfo.value.reason
    return excinfo.value.reason


@pytest.fixture
def ref() -> StreamRef:
    return {"stream": "testapp.NotificationStream", "args": [5], "kwargs": {}}


@pytest.fixture
def signed(ref: StreamRef) -> str:
    """``ref`` signed once, at SIGNED_AT."""
    with clock_at(SIGNED_AT):
        return sign(ref)


# -- signing and verifying ------------------------------------------------------------------


def test_sign_round_trips_through_unsign(ref: StreamRef, signed: str) -> None:
    assert unsign(signed) == ref


def test_sign_round_trips_keyword_arguments() -> None:
    ref: StreamRef = {"stream": "chat.PageStream", "args": ["a", None], "kwargs": {"page": 2}}
    assert unsign(sign(ref)) == ref


def test_signed_name_is_url_safe(signed: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_\-.:]+", signed)


def test_signed_name_is_djangos_signed_name_and_arguments(signed: str) -> None:
    # Empty keyword arguments are left out, to keep names short.
    assert django_signing.loads(signed, salt=SALT) == ["testapp.NotificationStream", [5]]


def test_signed_name_carries_keyword_arguments_when_there_are_some() -> None:
    signed = sign({"stream": "chat.PageStream", "args": [], "kwargs": {"page": 2}})
    assert django_signing.loads(signed, salt=SALT) == ["chat.PageStream", [], {"page": 2}]


def test_signed_name_embeds_the_second_it_was_made(signed: str) -> None:
    assert signed.split(":")[-2] == django_signing.b62_encode(SIGNED_AT)


def test_signed_names_made_in_one_second_are_equal(ref: StreamRef, signed: str) -> None:
    with clock_at(SIGNED_AT + 0.9):
        assert sign(ref) == signed


def test_unsign_tampered_signature_is_rejected(signed: str) -> None:
    last = "A" if signed[-1] != "A" else "B"
    assert rejected(signed[:-1] + last) == "invalid_signature"


def test_unsign_payload_of_another_stream_is_rejected(signed: str) -> None:
    other = sign({"stream": "testapp.NotificationStream", "args": [6], "kwargs": {}})
    payload = other.split(":")[0]
    assert rejected(payload + signed[signed.index(":") :]) == "invalid_signature"


@pytest.mark.parametrize("name", ["", "x", "a:b", "a:b:c", ":::", "." * 40])
def test_unsign_malformed_name_is_rejected(name: str) -> None:
    assert rejected(name) == "invalid_signature"


@pytest.mark.parametrize(
    "payload",
    [
        "testapp.NotificationStream",
        [],
        ["testapp.NotificationStream"],
        [5, [5]],
        ["testapp.NotificationStream", 5],
        ["testapp.NotificationStream", {"user_id": 5}],
        ["testapp.NotificationStream", [5], [6]],
        ["testapp.NotificationStream", [5], {}, {}],
    ],
)
def test_unsign_signed_payload_of_another_shape_is_rejected(payload: Any) -> None:
    assert rejected(django_signing.dumps(payload, salt=SALT, compress=True)) == (
        "invalid_signature"
    )


def test_unsign_name_signed_with_another_salt_is_rejected(ref: StreamRef) -> None:
    # Changing SIGNING_SALT invalidates every name handed out so far.
    with override_settings(TURBO_TASKS={"SIGNING_SALT": "before"}):
        signed = sign(ref)
    with override_settings(TURBO_TASKS={"SIGNING_SALT": "after"}):
        assert rejected(signed) == "invalid_signature"


def test_unsign_name_signed_with_another_secret_key_is_rejected(ref: StreamRef) -> None:
    with override_settings(SECRET_KEY="another-secret-key-of-another-site"):
        signed = sign(ref)
    assert rejected(signed) == "invalid_signature"


def test_unsign_name_signed_with_a_fallback_secret_key_is_accepted(
    ref: StreamRef, signed: str
) -> None:
    # Rotating SECRET_KEY keeps pages subscribed while the old key is a fallback.
    old_key = settings.SECRET_KEY
    with override_settings(SECRET_KEY="the-new-secret-key", SECRET_KEY_FALLBACKS=[old_key]):
        assert unsign(signed) == ref


@override_settings(TURBO_TASKS={"SIGNED_NAME_MAX_AGE": 60})
def test_unsign_name_older_than_max_age_is_expired(signed: str) -> None:
    with clock_at(SIGNED_AT + 61):
        assert rejected(signed) == "expired"


@override_settings(TURBO_TASKS={"SIGNED_NAME_MAX_AGE": 60})
def test_unsign_name_within_max_age_is_accepted(ref: StreamRef, signed: str) -> None:
    with clock_at(SIGNED_AT + 59):
        assert unsign(signed) == ref


def test_unsign_without_max_age_accepts_names_of_any_age(ref: StreamRef) -> None:
    ten_years = 10 * 365 * 24 * 3600
    with clock_at(time.time() - ten_years):
        signed = sign(ref)
    assert unsign(signed) == ref


# -- group names ----------------------------------------------------------------------------


def test_group_name_is_the_prefix_and_40_hex_digits(ref: StreamRef) -> None:
    assert re.fullmatch(r"turbo_tasks\.[0-9a-f]{40}", group_name(ref))


def test_group_name_does_not_depend_on_keyword_argument_order() -> None:
    ab: StreamRef = {"stream": "chat.PageStream", "args": [], "kwargs": {"a": 1, "b": 2}}
    ba: StreamRef = {"stream": "chat.PageStream", "args": [], "kwargs": {"b": 2, "a": 1}}
    assert group_name(ab) == group_name(ba)


@pytest.mark.parametrize(
    "other",
    [
        {"stream": "testapp.NotificationStream", "args": [6], "kwargs": {}},
        {"stream": "testapp.NotificationStream", "args": ["5"], "kwargs": {}},
        {"stream": "testapp.NotificationStream", "args": [], "kwargs": {"user_id": 5}},
        {"stream": "testapp.OtherStream", "args": [5], "kwargs": {}},
    ],
)
def test_group_name_differs_per_stream_and_arguments(ref: StreamRef, other: StreamRef) -> None:
    assert group_name(other) != group_name(ref)


def test_group_names_are_valid_channels_group_names():
    for stream in (Room(pk=1).stream, NotificationStream(10**30), AnnouncementStream()):
        assert stream.group_name.replace(".", "").replace("_", "").replace("-", "").isalnum()
        assert len(stream.group_name) < 100
    assert Room(pk=1).stream.group_name != Room(pk=2).stream.group_name
    assert Room(pk=1).stream.group_name != Message(pk=1).stream.group_name


# -- socket ids -----------------------------------------------------------------------------


def test_socket_id_is_38_url_safe_characters() -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}[0-9a-f]{16}", new_socket_id(7))


def test_socket_ids_are_fresh_each_time() -> None:
    assert new_socket_id(7) != new_socket_id(7)


@pytest.mark.parametrize("user_pk", [7, "7", None])
def test_socket_of_its_own_user_is_the_id(user_pk: Any) -> None:
    socket = new_socket_id(user_pk)
    assert socket_of(socket, user_pk) == socket


@pytest.mark.parametrize(("owner", "requester"), [(7, 8), (7, None), (None, 7)])
def test_socket_of_another_user_is_none(owner: Any, requester: Any) -> None:
    assert socket_of(new_socket_id(owner), requester) is None


def test_socket_id_with_an_altered_mac_is_none() -> None:
    socket = new_socket_id(7)
    forged = socket[:-1] + ("1" if socket.endswith("0") else "0")
    assert socket_of(forged, 7) is None


def test_socket_id_signed_with_another_secret_key_is_none() -> None:
    with override_settings(SECRET_KEY="another-secret-key-of-another-site"):
        socket = new_socket_id(7)
    assert socket_of(socket, 7) is None


@pytest.mark.parametrize("value", [None, 5, "", "short", "a b" * 13, "x" * 39])
def test_socket_of_a_malformed_value_is_none(value: Any) -> None:
    assert socket_of(value, None) is None


@pytest.mark.parametrize("value", ["6f1c2d9e-0b7a-4c1e-9a55-3e8f0d2b7c41", "a", "A_-9" * 16])
def test_token_accepts_ids_of_up_to_64_url_safe_characters(value: str) -> None:
    assert token(value) == value


@pytest.mark.parametrize("value", [None, 5, "", "x" * 65, "a b", "a<b>", "a/b", "ä"])
def test_token_refuses_anything_else(value: Any) -> None:
    assert token(value) is None


def test_unsign_rejects_a_signed_payload_that_does_not_decompress():
    from django.core.signing import TimestampSigner, b64_encode

    from turbo_tasks import conf

    bad = "." + b64_encode(b"not zlib data").decode()
    name = TimestampSigner(salt=conf.get("SIGNING_SALT")).sign(bad)
    with pytest.raises(StreamRejected) as excinfo:
        unsign(name)
    assert excinfo.value.reason == "invalid_signature"
