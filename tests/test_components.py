"""Components (turbo-django's BroadcastComponent and UserBroadcastComponent): the page's
render and subscription, the updates, and who gets them."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.template import Context, Template, TemplateSyntaxError

import turbo_tasks as turbo
from tests.testapp.streams import AlertComponent, CartCountComponent, NotificationStream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_server")]


def render(source: str, **context: object) -> str:
    return Template("{% load turbo_tasks %}" + source).render(Context(context))


def test_a_component_renders_its_subscription_then_its_template_with_the_pages_context():
    html = render("{% turbo_component alert %}", alert=AlertComponent(), text="Hello")
    subscription, rest = html.split("</turbo-channels-stream-source>")
    assert subscription.startswith("<turbo-channels-stream-source signed-stream-name=")
    assert 'since="' in subscription  # catch-up covers what is sent after this render
    assert rest == '<div id="testapp-alertcomponent"><p class="alert-info">Hello</p>\n</div>'


def test_a_component_named_in_the_template_is_built_with_the_arguments_given():
    ann = User.objects.create_user("ann")
    html = render('{% turbo_component "testapp.CartCountComponent" ann %}', ann=ann)
    assert f'<div id="testapp-cartcountcomponent-{ann.pk}"><span>ann: 0</span>' in html
    assert render('{% turbo_component "testapp:AlertComponent" %}').endswith(
        '<div id="testapp-alertcomponent">\n</div>'
    )


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ('{% turbo_component "testapp.Nothing" %}', "no component is registered"),
        ("{% turbo_component note %}", "takes a BroadcastComponent or its name"),
        ("{% turbo_component alert 1 %}", "arguments only after a component's name"),
    ],
)
def test_turbo_component_says_what_it_takes(source, error):
    with pytest.raises(TemplateSyntaxError, match=error):
        render(source, alert=AlertComponent(), note=NotificationStream(1))


def test_render_updates_the_component_after_commit(broker):
    AlertComponent().render(text="Restarting", level="warning")
    [job] = broker.jobs()
    assert job["turbo_action"] == "update"
    assert job["target"] == "testapp-alertcomponent"
    assert job["template"] == "components/alert.html"
    assert job["context"] == {"level": "warning", "text": "Restarting"}


def test_a_component_without_a_template_says_so():
    class Nameless(turbo.BroadcastComponent):
        pass

    with pytest.raises(TypeError, match="has no template_name"):
        Nameless().initial_render()


def test_a_user_component_is_its_users_alone():
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    component = CartCountComponent(ann)
    assert component == CartCountComponent(ann.pk)
    assert component.get_init_args() == [ann.pk]
    assert component.user_passes_test(ann)
    assert not component.user_passes_test(bob)
    assert not component.user_passes_test(AnonymousUser())
    assert CartCountComponent(ann.pk).user == ann


def test_a_user_component_needs_a_saved_user():
    with pytest.raises(ValueError, match="needs a saved user"):
        CartCountComponent(User(username="nobody"))


@pytest.mark.usefixtures("in_process_worker")
def test_updates_reach_the_components_subscribers_and_only_its_user(ws_client):
    from tests.test_revocation import session_cookie

    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    page = render('{% turbo_component "testapp.CartCountComponent" ann %}', ann=ann)
    signed = re.search(r'signed-stream-name="([^"]+)"', page)[1]
    anns, bobs = ws_client(cookie=session_cookie(ann)), ws_client(cookie=session_cookie(bob))
    assert anns.subscribe(signed)["type"] == "subscribed"
    assert bobs.subscribe(signed) == {
        "type": "rejected",
        "stream": signed,
        "reason": "forbidden",
    }
    CartCountComponent(ann).render(count=3)
    assert anns.messages() == (
        f'<turbo-stream action="update" target="testapp-cartcountcomponent-{ann.pk}">'
        "<template><span>ann: 3</span>\n</template></turbo-stream>"
    )
