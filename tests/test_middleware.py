"""TurboTasksMiddleware: while a view runs, the request's socket (``X-Turbo-Tasks-Socket``,
only a socket of the request's own user) and Turbo request id (``X-Turbo-Request-Id``) are
the sender and request id that jobs and actions record; sync and async."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, RequestFactory
from django.urls import path
from django.utils.functional import SimpleLazyObject

from turbo_tasks import request_context, signing
from turbo_tasks.middleware import TurboTasksMiddleware

REQUEST_ID = "6f1c2d9e-0b7a-4c1e-9a55-3e8f0d2b7c41"
ANN, BOB = 1, 2  # pks of two users who need no database row here


# What a job or action recorded in the view would carry of the request.
def origin_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(request_context.capture())


async def async_origin_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(request_context.capture())


urlpatterns = [path("origin/", origin_view), path("async-origin/", async_origin_view)]


def get(socket: str | None = None, request_id: str | None = None, user: Any = None) -> HttpRequest:
    """A request with the headers the element adds, as AuthenticationMiddleware leaves it."""
    headers = {}
    if socket is not None:
        headers[request_context.SOCKET_HEADER] = socket
    if request_id is not None:
        headers[request_context.REQUEST_ID_HEADER] = request_id
    request = RequestFactory().get("/", headers=headers)
    if user is not None:
        request.user = user

        async def auser() -> Any:
            return user

        request.auser = auser
    return request


def user(pk: int) -> User:
    return User(pk=pk, username=f"user{pk}")


def origin(response: Any) -> dict[str, str]:
    """What the view saw: the origin_view's JSON."""
    return json.loads(response.content)  # type: ignore[no-any-return]


def run(request: HttpRequest, view: Callable[[HttpRequest], Any] = origin_view) -> Any:
    return TurboTasksMiddleware(view)(request)


async def arun(request: HttpRequest) -> Any:
    return await TurboTasksMiddleware(async_origin_view)(request)


# -- sync ---------------------------------------------------------------------------------


def test_middleware_makes_the_socket_header_the_sender() -> None:
    socket = signing.new_socket_id(ANN)
    assert origin(run(get(socket, user=user(ANN)))) == {"sender": socket}


def test_middleware_makes_the_turbo_request_id_the_request_id() -> None:
    assert origin(run(get(request_id=REQUEST_ID))) == {"request_id": REQUEST_ID}


def test_middleware_without_headers_records_nothing() -> None:
    assert origin(run(get(user=AnonymousUser()))) == {}


@pytest.mark.parametrize(
    ("socket", "request_id"), [("a b<c>", None), (None, "x" * 65), ("", ""), ("é", "ü")]
)
def test_middleware_ignores_malformed_headers(socket: str | None, request_id: str | None) -> None:
    assert origin(run(get(socket, request_id, user=AnonymousUser()))) == {}


def test_middleware_ignores_a_socket_of_another_user() -> None:
    stolen = signing.new_socket_id(BOB)
    assert origin(run(get(stolen, REQUEST_ID, user=user(ANN)))) == {"request_id": REQUEST_ID}


def test_middleware_ignores_an_anonymous_socket_in_a_logged_in_request() -> None:
    anonymous = signing.new_socket_id(None)
    assert origin(run(get(anonymous, user=user(ANN)))) == {}


def test_middleware_ignores_a_users_socket_in_an_anonymous_request() -> None:
    anns = signing.new_socket_id(ANN)
    assert origin(run(get(anns, user=AnonymousUser()))) == {}


def test_middleware_without_authentication_middleware_takes_anonymous_sockets() -> None:
    anonymous = signing.new_socket_id(None)
    assert origin(run(get(anonymous))) == {"sender": anonymous}


def test_middleware_loads_no_user_for_a_request_without_a_socket() -> None:
    def no_user() -> Any:
        raise AssertionError("the user was loaded")

    request = get(request_id=REQUEST_ID, user=SimpleLazyObject(no_user))
    assert origin(run(request)) == {"request_id": REQUEST_ID}


def test_middleware_origin_ends_with_the_response() -> None:
    run(get(signing.new_socket_id(None), REQUEST_ID))
    assert request_context.capture() == {}


def test_middleware_origin_ends_when_the_view_raises() -> None:
    def failing_view(request: HttpRequest) -> HttpResponse:
        assert request_context.capture() == {"request_id": REQUEST_ID}
        raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError, match="the view failed"):
        run(get(request_id=REQUEST_ID), failing_view)
    assert request_context.capture() == {}


# -- async --------------------------------------------------------------------------------


def test_middleware_is_async_for_an_async_view_and_sync_for_a_sync_one() -> None:
    assert iscoroutinefunction(TurboTasksMiddleware(async_origin_view))
    assert not iscoroutinefunction(TurboTasksMiddleware(origin_view))


@pytest.mark.asyncio
async def test_middleware_async_makes_the_headers_the_sender_and_request_id() -> None:
    socket = signing.new_socket_id(ANN)
    response = await arun(get(socket, REQUEST_ID, user=user(ANN)))
    assert origin(response) == {"sender": socket, "request_id": REQUEST_ID}


@pytest.mark.asyncio
async def test_middleware_async_ignores_a_socket_of_another_user() -> None:
    stolen = signing.new_socket_id(BOB)
    assert origin(await arun(get(stolen, user=user(ANN)))) == {}


@pytest.mark.asyncio
async def test_middleware_async_without_authentication_middleware_takes_anonymous_sockets() -> None:
    anonymous = signing.new_socket_id(None)
    assert origin(await arun(get(anonymous))) == {"sender": anonymous}


@pytest.mark.asyncio
async def test_middleware_async_loads_no_user_for_a_request_without_a_socket() -> None:
    request = get(request_id=REQUEST_ID)

    async def no_user() -> Any:
        raise AssertionError("the user was loaded")

    request.auser = no_user
    assert origin(await arun(request)) == {"request_id": REQUEST_ID}


@pytest.mark.asyncio
async def test_middleware_async_origin_ends_with_the_response() -> None:
    await arun(get(signing.new_socket_id(None), REQUEST_ID))
    assert request_context.capture() == {}


# -- in the settings' middleware stack, after AuthenticationMiddleware ------------------------


@pytest.fixture
def ann(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("ann")


@pytest.mark.urls("tests.test_middleware")
def test_middleware_in_the_stack_takes_the_logged_in_users_socket(ann: User) -> None:
    client = Client()
    client.force_login(ann)
    socket = signing.new_socket_id(ann.pk)
    response = client.get("/origin/", headers={"X-Turbo-Tasks-Socket": socket})
    assert origin(response) == {"sender": socket}


@pytest.mark.urls("tests.test_middleware")
def test_middleware_in_the_stack_ignores_another_users_socket(ann: User) -> None:
    client = Client()
    client.force_login(ann)
    stolen = signing.new_socket_id(ann.pk + 1)
    response = client.get("/origin/", headers={"X-Turbo-Tasks-Socket": stolen})
    assert origin(response) == {}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.urls("tests.test_middleware")
async def test_middleware_in_the_async_stack_takes_the_logged_in_users_socket() -> None:
    ann = await User.objects.acreate(username="ann")
    client = AsyncClient()
    await client.aforce_login(ann)
    socket = signing.new_socket_id(ann.pk)
    response = await client.get(
        "/async-origin/", headers={"X-Turbo-Tasks-Socket": socket, "X-Turbo-Request-Id": "r1"}
    )
    assert origin(response) == {"sender": socket, "request_id": "r1"}
