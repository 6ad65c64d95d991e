"""TurboStreamResponse and accepts_turbo_stream: streams answered in the request, no worker."""

from __future__ import annotations

import re

import pytest
from django.http import HttpRequest
from django.test import Client, RequestFactory

import turbo_tasks as turbo
from turbo_tasks.http import TurboStreamResponse, accepts_turbo_stream
from turbo_tasks.markup import turbo_stream

TURBO_ACCEPT = "text/vnd.turbo-stream.html, text/html, application/xhtml+xml"


@pytest.fixture
def request_() -> HttpRequest:
    return RequestFactory().post("/messages/")


def test_response_content_type() -> None:
    response = TurboStreamResponse()
    assert response["Content-Type"] == "text/vnd.turbo-stream.html; charset=utf-8"
    assert response.status_code == 200
    assert response.content == b""


def test_response_append_template_markup(request_: HttpRequest) -> None:
    response = TurboStreamResponse(request_).append(
        "chat/message.html", {"message": {"id": 5, "text": "hi"}}, id="messages"
    )
    assert response.content.decode() == (
        '<turbo-stream action="append" target="messages"><template>'
        '<p id="message-5">hi</p></template></turbo-stream>'
    )


@pytest.mark.parametrize("action", ["append", "prepend", "replace", "update", "before", "after"])
def test_response_action_text_markup(action: str) -> None:
    response = getattr(TurboStreamResponse(), action)(text="3 online", id="count")
    assert response.content.decode() == (
        f'<turbo-stream action="{action}" target="count"><template>3 online</template>'
        f"</turbo-stream>"
    )


def test_response_morphs_on_replace_and_update_only() -> None:
    response = TurboStreamResponse().replace(text="x", id="room", method="morph")
    assert response.content.decode() == (
        '<turbo-stream action="replace" method="morph" target="room"><template>x</template>'
        "</turbo-stream>"
    )
    with pytest.raises(ValueError, match="only method='morph' is supported"):
        TurboStreamResponse().update(text="x", id="room", method="swap")  # type: ignore[arg-type]


def test_response_text_is_escaped() -> None:
    response = TurboStreamResponse().update(text="<b>&</b>", id="count")
    assert response.content.decode() == (
        '<turbo-stream action="update" target="count"><template>&lt;b&gt;&amp;&lt;/b&gt;'
        "</template></turbo-stream>"
    )


def test_response_template_autoescapes() -> None:
    response = TurboStreamResponse().append(
        "chat/message.html", {"message": {"id": 1, "text": "<script>"}}, id="messages"
    )
    assert '<p id="message-1">&lt;script&gt;</p>' in response.content.decode()


def test_response_selector_sends_targets() -> None:
    response = TurboStreamResponse().remove(selector=".msg")
    assert (
        response.content.decode() == '<turbo-stream action="remove" targets=".msg"></turbo-stream>'
    )


def test_response_chaining_keeps_order_and_returns_response() -> None:
    response = TurboStreamResponse().update(text="1", id="count").remove(id="form-errors")
    assert isinstance(response, TurboStreamResponse)
    assert response.content.decode() == (
        '<turbo-stream action="update" target="count"><template>1</template></turbo-stream>'
        '<turbo-stream action="remove" target="form-errors"></turbo-stream>'
    )


def test_response_from_frames_then_actions() -> None:
    frame = turbo_stream("remove", target="message-5")
    response = TurboStreamResponse(frames=[frame]).remove(id="message-6")
    assert response.content.decode() == (
        '<turbo-stream action="remove" target="message-5"></turbo-stream>'
        '<turbo-stream action="remove" target="message-6"></turbo-stream>'
    )


def test_response_status_and_headers_pass_through() -> None:
    response = TurboStreamResponse(status=422, headers={"Vary": "Accept"})
    assert response.status_code == 422
    assert response["Vary"] == "Accept"
    assert response["Content-Type"] == "text/vnd.turbo-stream.html; charset=utf-8"


def test_response_renders_csrf_token_with_request(request_: HttpRequest) -> None:
    response = TurboStreamResponse(request_).replace("chat/message_form.html", id="message-form")
    assert re.search(
        r'<input type="hidden" name="csrfmiddlewaretoken" value="[A-Za-z0-9]{64}">',
        response.content.decode(),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "x"}, "Pass exactly one of id= (an element id, sent as target=) or selector="),
        ({"text": "x", "id": "a", "selector": ".a"}, "got both"),
        (
            {"id": "a"},
            "append() needs a template name (with an optional context) or text=, not neither.",
        ),
        (
            {"template": "chat/message.html", "text": "x", "id": "a"},
            "append() needs a template name (with an optional context) or text=, not both.",
        ),
    ],
)
def test_response_bad_arguments_raise(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TurboStreamResponse().append(**kwargs)


def test_response_remove_needs_a_target() -> None:
    with pytest.raises(ValueError, match="got neither"):
        TurboStreamResponse().remove()


def test_response_bad_arguments_add_nothing() -> None:
    response = TurboStreamResponse()
    with pytest.raises(ValueError, match="got neither"):
        response.append(text="x")
    assert response.content == b""


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (TURBO_ACCEPT, True),
        ("text/vnd.turbo-stream.html", True),
        ("TEXT/VND.TURBO-STREAM.HTML;q=0.9, text/html", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("*/*", False),
        ("text/vnd.turbo-stream.htmlx", False),
        (None, False),
    ],
)
def test_accepts_turbo_stream(accept: str | None, expected: bool) -> None:
    headers = {} if accept is None else {"Accept": accept}
    request = RequestFactory().post("/messages/", headers=headers)
    assert accepts_turbo_stream(request) is expected


def test_public_names_exported() -> None:
    assert turbo.TurboStreamResponse is TurboStreamResponse
    assert turbo.accepts_turbo_stream is accepts_turbo_stream
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        turbo.nope  # type: ignore[attr-defined]  # noqa: B018


def test_view_answers_turbo_submission_with_streams() -> None:
    response = Client().post("/messages/", {"text": "hi <3"}, headers={"Accept": TURBO_ACCEPT})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/vnd.turbo-stream.html; charset=utf-8"
    assert response.content.decode() == (
        '<turbo-stream action="append" target="messages"><template>'
        '<p id="message-1">hi &lt;3</p></template></turbo-stream>'
        '<turbo-stream action="remove" target="form-errors"></turbo-stream>'
    )


def test_view_invalid_form_is_422_with_csrf_token() -> None:
    response = Client().post("/messages/", {"text": ""}, headers={"Accept": TURBO_ACCEPT})
    assert response.status_code == 422
    content = response.content.decode()
    assert content.startswith(
        '<turbo-stream action="replace" target="message-form"><template><form id="message-form"'
    )
    assert 'name="csrfmiddlewaretoken" value="' in content
    assert '<p id="form-errors">Say something.</p>' in content


def test_view_plain_submission_redirects() -> None:
    response = Client().post("/messages/", {"text": "hi"})
    assert response.status_code == 302
