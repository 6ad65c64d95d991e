"""System checks: each misconfiguration that makes broadcasts vanish has an id and a message
saying what to write instead; the test settings raise none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery._state import get_current_app
from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer
from django.core.checks import run_checks
from django.test import override_settings

from turbo_tasks import checks


def ids(messages):
    return [m.id for m in messages]


def test_checks_pass_with_the_test_settings():
    assert checks.check_settings() + checks.check_channel_layer() + checks.check_catch_up() == []


def test_checks_run_by_django_under_the_turbo_tasks_tag_pass_with_the_test_settings() -> None:
    assert run_checks(tags=["turbo_tasks"]) == []


@override_settings(CHANNEL_LAYERS={})
def test_checks_run_by_django_under_the_turbo_tasks_tag() -> None:
    assert ids(run_checks(tags=["turbo_tasks"])) == ["turbo_tasks.E002"]


@override_settings(TURBO_TASKS=["QUEUE"])
def test_checks_run_by_django_report_turbo_tasks_not_a_dict_only_as_e001() -> None:
    assert ids(run_checks(tags=["turbo_tasks"])) == ["turbo_tasks.E001"]


# -- TURBO_TASKS (E001, E005, E006) ---------------------------------------------------------


@override_settings(TURBO_TASKS={"QUEUEE": "x", "MAX_FRAME_SIZE": 0})
def test_check_unknown_and_invalid_turbo_tasks_keys():
    messages = checks.check_settings()
    # Each problem has an id of its own, so one can be silenced without the others.
    assert ids(messages) == ["turbo_tasks.E005", "turbo_tasks.E006"]
    assert messages[0].msg == "Unknown TURBO_TASKS key(s): QUEUEE."
    assert "MAX_FRAME_SIZE" in messages[1].msg


@override_settings(TURBO_TASKS={"QUEUEE": "x", "HISTORY_LENGHT": 0})
def test_check_unknown_keys_hint_lists_the_allowed_keys() -> None:
    [error] = checks.check_settings()
    assert error.msg == "Unknown TURBO_TASKS key(s): HISTORY_LENGHT, QUEUEE."
    assert (error.hint or "").startswith("Allowed keys: QUEUE, CHANNEL_LAYER, SIGNING_SALT, ")
    assert "HISTORY_LENGTH" in (error.hint or "")


@override_settings(TURBO_TASKS=["QUEUE"])
def test_check_turbo_tasks_must_be_a_dict():
    assert ids(checks.check_settings()) == ["turbo_tasks.E001"]


@override_settings(TURBO_TASKS=["QUEUE"])
def test_check_turbo_tasks_not_a_dict_names_its_type_and_the_allowed_keys() -> None:
    [error] = checks.check_settings()
    assert error.msg.startswith("TURBO_TASKS must be a dict, not list; allowed keys: QUEUE, ")


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("MAX_JOBS_PER_MESSAGE", 0, "a positive integer"),
        ("MAX_SUBSCRIPTIONS_PER_SOCKET", 2.0, "a positive integer"),
        ("HISTORY_LENGTH", -1, "an integer >= 0"),
        ("HISTORY_LENGTH", True, "an integer >= 0"),
        ("HISTORY_SECONDS", "600", "a number of seconds > 0"),
        ("GAP_CHECK_SECONDS", 0, "a number of seconds > 0"),
        ("MAX_RETRIES", None, "an integer >= 0"),
        ("RETRY_BACKOFF", False, "a number of seconds > 0"),
        ("SIGNED_NAME_MAX_AGE", 0, "None or a number of seconds > 0"),
        ("PUBLISH_MODE", "queue", "'direct' or 'outbox'"),
        ("OUTBOX_RELAY_AGE", -1, "a number of seconds >= 0"),
        ("OUTBOX_DATABASES", "default", "None or a list of database aliases"),
        ("PUBLISH_RETRY_POLICY", None, "a dict of kombu retry_policy options"),
    ],
)
def test_check_invalid_value_names_the_key_the_rule_and_the_value(
    key: str, value: Any, rule: str
) -> None:
    with override_settings(TURBO_TASKS={key: value}):
        [error] = checks.check_settings()
    assert error.id == "turbo_tasks.E006"
    assert error.msg == f"TURBO_TASKS[{key!r}] must be {rule}, not {value!r}."


@override_settings(TURBO_TASKS={"OUTBOX_DATABASES": ["default", "replica"]})
def test_check_outbox_databases_must_name_configured_databases():
    [message] = checks.check_settings()
    assert message.id == "turbo_tasks.E006"
    assert "OUTBOX_DATABASES" in message.msg


@override_settings(TURBO_TASKS={"MAX_RETRIES": -1, "PUBLISH_MODE": "queue"})
def test_check_each_invalid_value_is_an_error_of_its_own() -> None:
    assert [m.msg for m in checks.check_settings()] == [
        "TURBO_TASKS['MAX_RETRIES'] must be an integer >= 0, not -1.",
        "TURBO_TASKS['PUBLISH_MODE'] must be 'direct' or 'outbox', not 'queue'.",
    ]


@pytest.mark.parametrize(
    "value",
    [
        {"HISTORY_LENGTH": 0},
        {"HISTORY_SECONDS": 0.5, "RETRY_BACKOFF_MAX": 1.5},
        {"SIGNED_NAME_MAX_AGE": None},
        {"SIGNED_NAME_MAX_AGE": 3600},
        {"PUBLISH_MODE": "outbox", "OUTBOX_RELAY_AGE": 0},
        {"OUTBOX_DATABASES": ["default", "other"]},
        {"PUBLISH_RETRY_POLICY": {"max_retries": 0}},
    ],
    ids=str,
)
def test_check_valid_values_are_no_error(value: dict[str, Any]) -> None:
    with override_settings(TURBO_TASKS=value):
        assert checks.check_settings() == []


# -- CHANNEL_LAYERS (E002, E003, W005) ------------------------------------------------------


@override_settings(CHANNEL_LAYERS={})
def test_check_no_channel_layer():
    assert ids(checks.check_channel_layer()) == ["turbo_tasks.E002"]


@override_settings(TURBO_TASKS={"CHANNEL_LAYER": "missing"})
def test_check_turbo_tasks_layer_alias_missing():
    assert ids(checks.check_channel_layer()) == ["turbo_tasks.E002"]


@override_settings(TURBO_TASKS={"CHANNEL_LAYER": "missing"})
def test_check_missing_layer_names_the_alias_and_how_to_add_one() -> None:
    [error] = checks.check_channel_layer()
    assert error.msg == (
        "CHANNEL_LAYERS has no 'missing' layer, so workers have nowhere to send frames and "
        "browsers never receive them."
    )
    assert "'channels_redis.core.RedisChannelLayer'" in (error.hint or "")
    assert "TURBO_TASKS['CHANNEL_LAYER']" in (error.hint or "")


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": checks.IN_MEMORY_LAYER}})
def test_check_in_memory_layer_with_out_of_process_workers():
    assert ids(checks.check_channel_layer()) == ["turbo_tasks.E003"]


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": checks.IN_MEMORY_LAYER}})
def test_check_in_memory_layer_says_frames_never_reach_the_websockets() -> None:
    [error] = checks.check_channel_layer()
    assert error.msg.startswith("Channel layer 'default' is the in-memory layer, but ")
    assert "their frames never reach this process's websockets" in error.msg
    assert (error.hint or "").startswith("Use channels_redis (RedisChannelLayer or ")


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": checks.IN_MEMORY_LAYER}},
    CELERY_TASK_ALWAYS_EAGER=True,
)
def test_check_in_memory_layer_is_fine_with_eager_tasks():
    assert checks.check_channel_layer() == []


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["redis://localhost:6379/0"], ["turbo_tasks.W005"]),
        ([{"address": "redis://localhost:6379/0", "socket_timeout": 5}], ["turbo_tasks.W005"]),
        ([{"address": "redis://localhost:6379/0", "socket_timeout": 15}], []),
        ([{"address": "redis://localhost:6379/0", "socket_timeout": None}], []),
    ],
)
def test_check_redis_socket_timeout_shorter_than_blocking_receive(hosts, expected):
    layers = {"default": {"BACKEND": checks.REDIS_CORE_LAYER, "CONFIG": {"hosts": hosts}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert ids(checks.check_channel_layer()) == expected


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": checks.REDIS_CORE_LAYER}})
def test_check_redis_socket_timeout_of_the_default_host_is_redis_pys() -> None:
    [warning] = checks.check_channel_layer()
    assert warning.id == "turbo_tasks.W005"
    assert warning.msg.startswith("Channel layer 'default': its Redis socket timeout ")
    assert "reads on idle websockets time out" in warning.msg
    assert "'socket_timeout': 15" in (warning.hint or "")


def test_check_redis_socket_timeout_is_left_alone_on_the_pubsub_layer() -> None:
    # Its receive loop reads with short timeouts: a 5 s socket timeout never fires there.
    hosts = [{"address": "redis://localhost:6379/0", "socket_timeout": 5}]
    layer = {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": hosts}}
    with override_settings(CHANNEL_LAYERS={"default": layer}):
        assert checks.check_channel_layer() == []


# -- catch-up (W007, W008) ------------------------------------------------------------------


@override_settings(TURBO_TASKS={"HISTORY_LENGTH": 0})
def test_check_catch_up_turned_off_says_what_pages_lose():
    [warning] = checks.check_catch_up()
    assert warning.id == "turbo_tasks.W007"
    assert "misses every change committed while its socket reconnects" in warning.msg
    assert warning.hint


class ThirdPartyLayer(BaseChannelLayer):
    """A channel layer that is not one of channels_redis'."""


class OwnRedisLayer(RedisChannelLayer):
    """A project's subclass of a channels_redis layer."""


@pytest.mark.parametrize(
    ("backend", "eager", "expected"),
    [
        ("tests.test_checks.ThirdPartyLayer", False, ["turbo_tasks.W008"]),
        (checks.IN_MEMORY_LAYER, True, ["turbo_tasks.W008"]),
        (checks.IN_MEMORY_LAYER, False, []),  # turbo_tasks.E003 says it all
        ("channels_redis.core.RedisChannelLayer", False, []),
        ("channels_redis.pubsub.RedisPubSubChannelLayer", False, []),
        ("tests.test_checks.OwnRedisLayer", False, []),
        ("no.such.Layer", False, []),  # channels says so at its first use
    ],
)
def test_check_catch_up_needs_a_channels_redis_layer(backend, eager, expected):
    layers = {"default": {"BACKEND": backend}}
    with override_settings(CHANNEL_LAYERS=layers, CELERY_TASK_ALWAYS_EAGER=eager):
        messages = checks.check_catch_up()
    assert ids(messages) == expected
    if messages:
        assert backend in messages[0].msg
        assert "catch-up cannot work" in messages[0].msg
        assert "RedisPubSubChannelLayer" in (messages[0].hint or "")


@pytest.mark.parametrize(
    "mistake",
    [{"CHANNEL_LAYERS": {}}, {"TURBO_TASKS": ["QUEUE"]}, {"TURBO_TASKS": {"HISTORY_LENGTH": "0"}}],
    ids=["E002", "E001", "E006"],
)
def test_check_catch_up_leaves_other_mistakes_to_their_own_checks(mistake):
    with override_settings(**mistake):
        assert checks.check_catch_up() == []


# -- the Celery app (W004) ------------------------------------------------------------------


def test_check_celery_app_is_loaded():
    # conftest loads the project's app (worker.app), as a project's __init__.py does.
    assert checks.check_celery_app() == []


@pytest.fixture
def celery_fallback_app() -> Iterator[Celery]:
    """The app Celery makes when a process loaded none of the project's."""
    loaded = get_current_app()
    fallback = Celery("default", fixups=[], loader="app", set_as_current=False)
    fallback.set_current()
    yield fallback
    loaded.set_current()


@pytest.mark.usefixtures("celery_fallback_app")
def test_check_celery_app_not_loaded_says_where_to_load_it() -> None:
    [warning] = checks.check_celery_app()
    assert warning.id == "turbo_tasks.W004"
    assert warning.msg.startswith("No Celery app is loaded in this process, so broadcasts")
    assert "`from .celery import app as celery_app`" in (warning.hint or "")


def test_check_celery_app_named_default_with_a_broker_is_loaded(
    celery_fallback_app: Celery,
) -> None:
    celery_fallback_app.conf.update(broker_url="redis://localhost:6379/0")
    assert checks.check_celery_app() == []


# -- exclude_sender (W006) ------------------------------------------------------------------


def test_check_exclude_sender_needs_the_middleware():
    assert checks.check_sender_middleware() == []  # tests.settings has it
    with override_settings(MIDDLEWARE=[]):
        (warning,) = checks.check_sender_middleware()
    assert warning.id == "turbo_tasks.W006"
    assert "testapp.NoticeStream" in warning.msg


@override_settings(MIDDLEWARE=[])
def test_check_exclude_sender_without_the_middleware_says_what_to_add() -> None:
    [warning] = checks.check_sender_middleware()
    assert warning.msg.startswith(
        "Stream(s) testapp.NoticeStream say Meta.exclude_sender = True, but no request names "
        "its sender: turbo_tasks.middleware.TurboTasksMiddleware is not in MIDDLEWARE"
    )
    assert warning.hint == "Add 'turbo_tasks.middleware.TurboTasksMiddleware' to MIDDLEWARE."
