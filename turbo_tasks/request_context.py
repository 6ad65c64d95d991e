"""Request context: what a job carries of the request that caused it.

Captured when a job is recorded (signal time, or an action's call) as the job's ``request``
object, only with what differs from the worker's own defaults::

    {"action": "save", "model": "chat.message", "pk": 5, "created": true,
     "request": {"language": "fr", "time_zone": "Europe/Paris",
                 "sender": "bq3n…", "request_id": "6f1c…"}}

and restored in the worker around the hooks and the rendering (:func:`activated`):

- ``language``: ``translation.get_language()``, activated with ``translation.override``;
- ``time_zone``: the current time zone's IANA name, activated with ``timezone.override``;
- ``sender``: the socket the request came from (the page's ``hello.socket_id``, sent by the
  element as the ``X-Turbo-Tasks-Socket`` header); actions with ``exclude_sender`` skip it;
- ``request_id``: Turbo 8's ``X-Turbo-Request-Id``, put on ``refresh`` actions as
  ``request-id`` so the page that made the change does not refresh itself.

The last two come from :class:`turbo_tasks.middleware.TurboTasksMiddleware`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import tzinfo
from types import MappingProxyType

from django.conf import settings
from django.utils import timezone, translation

from turbo_tasks.jobs import LOCALE_KEYS, ORIGIN_KEYS
from turbo_tasks.signing import token

SOCKET_HEADER = "X-Turbo-Tasks-Socket"
REQUEST_ID_HEADER = "X-Turbo-Request-Id"


# The sender and request id of the request being handled (set by the middleware), or of the
# job being run (set by the worker).
_NONE: Mapping[str, str] = MappingProxyType({})
_origin: ContextVar[Mapping[str, str]] = ContextVar("turbo_tasks_origin", default=_NONE)
# True while a worker runs a job's hooks or renders its frames (activated()).
_in_job: ContextVar[bool] = ContextVar("turbo_tasks_in_job", default=False)


@contextlib.contextmanager
def origin(sender: str | None, request_id: str | None) -> Iterator[None]:
    """Make ``sender``/``request_id`` (malformed values are dropped) the current ones."""
    values = {"sender": token(sender), "request_id": token(request_id)}
    reset = _origin.set({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        _origin.reset(reset)


def capture(*, for_job: bool = False) -> dict[str, str]:
    """The request context now, as a job's ``request`` object (empty when all is default).

    ``for_job``: for a job a write records. In a worker, a hook's own writes keep the
    language and time zone of the job that ran it, but not its sender or request id: that
    page did not make these changes, and must neither be spared them nor ignore their
    refresh."""
    found = {} if for_job and _in_job.get() else dict(_origin.get())
    # Each lookup costs ~3 µs (asgiref Locals) on the write path: only when it can matter.
    if settings.USE_I18N:
        language = translation.get_language()
        if language and language != settings.LANGUAGE_CODE:
            found["language"] = language
    if settings.USE_TZ:
        # A fixed offset (datetime.timezone) has no IANA name a worker could load.
        name = getattr(timezone.get_current_timezone(), "key", None)
        if name and name != timezone.get_default_timezone_name():
            found["time_zone"] = name
    return found


@contextlib.contextmanager
def activated(request: Mapping[str, str] | None) -> Iterator[None]:
    """Run the block as the job's request did: its language, time zone and origin (the
    worker's defaults for what the job does not carry). ``request`` was checked with
    ``turbo_tasks.jobs.validate``.

    Inside a block that activated the same request (see :func:`batch`), and with nothing
    changed since, there is nothing to do: activating costs ~17 µs (asgiref Locals), and a
    task does it twice per job, for the hooks and for the frame."""
    request = request or {}
    in_job = _in_job.set(True)
    try:
        held = _held.get()
        if (
            held is not None
            and held[0] == _key(request)
            and held[1] == translation.get_language()
            and held[2] is timezone.get_current_timezone()
        ):
            yield
        else:
            with _override(request):
                yield
    finally:
        _in_job.reset(in_job)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Around a task's jobs: activate the worker's defaults once, so that the jobs without
    a request context of their own (most of them) do not each activate them again."""
    with _override({}):
        yield


# The request context the innermost _override activated: its key, and the language and
# time zone that were current right after (a hook that activates others in between without
# restoring them makes the next job activate its own again).
_held: ContextVar[tuple[tuple[str | None, ...], str | None, tzinfo] | None] = ContextVar(
    "turbo_tasks_held", default=None
)


_KEYS = ("language", "time_zone", "sender", "request_id")


def _key(request: Mapping[str, str]) -> tuple[str | None, ...]:
    return tuple(request.get(k) for k in _KEYS)


@contextlib.contextmanager
def _override(request: Mapping[str, str]) -> Iterator[None]:
    with (
        translation.override(_supported(request.get("language"))),
        # The default time zone activated, not just the override's None: reading the
        # current time zone is then ~2 µs cheaper (no AttributeError inside asgiref).
        timezone.override(request.get("time_zone") or timezone.get_default_timezone()),
        origin(request.get("sender"), request.get("request_id")),
    ):
        held = _held.set(
            (_key(request), translation.get_language(), timezone.get_current_timezone())
        )
        try:
            yield
        finally:
            _held.reset(held)


def _supported(language: str | None) -> str:
    """``language``, or its variant the project supports (settings.LANGUAGES), else the
    default: activating arbitrary codes would grow Django's translation cache for good."""
    if language is None or not settings.USE_I18N:
        return str(settings.LANGUAGE_CODE)
    try:
        return translation.get_supported_language_variant(language)
    except LookupError:
        return str(settings.LANGUAGE_CODE)


def merged(earlier: Mapping[str, str] | None, later: Mapping[str, str] | None) -> dict[str, str]:
    """The request of two jobs of one row merged into one hook call: the later job's
    language and time zone; a sender or request id only if both jobs had the same."""
    earlier, later = earlier or {}, later or {}
    result = {k: v for k, v in later.items() if k in LOCALE_KEYS}
    for key in ORIGIN_KEYS:
        if key in later and later.get(key) == earlier.get(key):
            result[key] = later[key]
    return result
