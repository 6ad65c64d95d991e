"""Delete snapshots: which fields a delete job keeps, and which field names count as secret."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

import turbo_tasks as turbo
from tests.testapp.models import Member
from tests.testapp.streams import MemberStream
from turbo_tasks.registry import Registry
from turbo_tasks.snapshots import is_secret, snapshot_attnames

# -- delete snapshots ---------------------------------------------------------------------


def test_snapshot_leaves_out_secret_looking_fields_by_default():
    assert MemberStream.snapshot_attnames == ("id", "room_id", "name")


@pytest.mark.parametrize(
    ("fields", "exclude", "attnames"),
    [
        ("__all__", None, ("id", "room_id", "name", "password", "api_token")),
        (["room", "name"], None, ("id", "room_id", "name")),  # the pk is always kept
        (None, ["name"], ("id", "room_id")),
        ("__all__", ["password"], ("id", "room_id", "name", "api_token")),
    ],
)
def test_snapshot_meta_options_choose_the_fields(fields, exclude, attnames):
    assert snapshot_attnames(Member, fields, exclude) == attnames


def test_snapshot_meta_option_naming_an_unknown_field_is_improperly_configured():
    class MemberStream(turbo.ModelStream):
        class Meta:
            model = Member
            snapshot_fields = ["name", "nickname"]

    with pytest.raises(ImproperlyConfigured) as excinfo:
        Registry().register(MemberStream, "testapp")
    assert "Meta.snapshot_fields names unknown field(s) of testapp.Member: nickname" in str(
        excinfo.value
    )


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("api_token", True),
        ("apikey", True),
        ("client_secret", True),
        ("tokens", True),
        ("author", False),  # "auth" is not a secret
        ("author_id", False),
        ("keyword", False),
        ("tokenizer", False),
    ],
)
def test_secret_field_names(name, secret):
    assert is_secret(name) is secret
