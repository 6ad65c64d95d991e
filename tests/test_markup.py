"""The ``<turbo-stream>`` element: its markup, its actions and the rules its attributes follow."""

from __future__ import annotations

import pytest

import turbo_tasks as turbo
from turbo_tasks.markup import turbo_stream


@pytest.mark.parametrize("action", ["append", "prepend", "replace", "update", "before", "after"])
def test_markup_with_template_content(action):
    assert turbo_stream(action, target="messages", content="<p>hi</p>") == (
        f'<turbo-stream action="{action}" target="messages"><template><p>hi</p></template>'
        "</turbo-stream>"
    )


def test_markup_remove_has_no_template():
    assert turbo_stream("remove", target="message-5") == (
        '<turbo-stream action="remove" target="message-5"></turbo-stream>'
    )


def test_markup_selector_becomes_targets_and_is_attribute_escaped():
    assert turbo_stream("remove", targets='.msg[data-x="1"]') == (
        '<turbo-stream action="remove" targets=".msg[data-x=&quot;1&quot;]"></turbo-stream>'
    )


def test_unknown_action_is_a_value_error_listing_the_actions():
    with pytest.raises(
        ValueError,
        match=r"Unknown action 'explode', must be one of: append, "
        r"prepend, replace, update, before, after, remove, refresh\.",
    ):
        turbo_stream("explode", target="x")


def test_public_names():
    assert turbo.ACTIONS == (
        "append", "prepend", "replace", "update", "before", "after", "remove", "refresh"
    )  # fmt: skip
    assert turbo.REFRESH == "refresh"
    assert turbo.APPEND == "append"
    assert turbo.REMOVE == "remove"


def test_refresh_takes_no_target():
    from turbo_tasks.markup import check_frame

    with pytest.raises(ValueError, match="A refresh takes no target"):
        check_frame("refresh", "room", None, None)


def test_refresh_takes_no_template_or_text():
    from turbo_tasks.markup import check_content

    with pytest.raises(ValueError, match="A refresh takes no template or text"):
        check_content("refresh", template=False, text=True)


def test_remove_needs_no_content_and_append_exactly_one():
    from turbo_tasks.markup import check_content

    check_content("remove", template=False, text=False)
    with pytest.raises(ValueError, match=r"append\(\) needs a template name .* not both"):
        check_content("append", template=True, text=True)


def test_the_old_rendering_path_of_turbo_stream_works_and_warns():
    from turbo_tasks import markup, rendering

    with pytest.deprecated_call(match="turbo_tasks.markup.turbo_stream"):
        old = rendering.turbo_stream
    assert old is markup.turbo_stream
