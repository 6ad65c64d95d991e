"""``python example/manage.py seed_demo``: demo users, rooms and a few messages.

Idempotent: users and rooms are created once, passwords and memberships are reset to the
values below, and the welcome messages are only added to a room that has no messages.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from example.chat.models import Message, Room

PASSWORD = "turbo-demo"
USERS = ["alice", "bob", "carol"]
ROOMS = {
    # carol is deliberately not in "general": her peek at it shows the refused subscription.
    "general": ["alice", "bob"],
    "book club": ["bob", "carol"],
}
WELCOME = {
    "general": [
        ("alice", "Welcome to general! Open this room as bob in another browser window."),
        ("bob", "Hi alice. Anything we post, edit or delete shows up on each other's page."),
    ],
    "book club": [("carol", "What are we reading next?")],
}


class Command(BaseCommand):
    help = "Create the demo users (alice, bob, carol), rooms and memberships; idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            users = {}
            for username in USERS:
                user, _ = User.objects.get_or_create(username=username)
                user.set_password(PASSWORD)
                user.save()
                users[username] = user
            for name, members in ROOMS.items():
                room, _ = Room.objects.get_or_create(name=name)
                room.members.set([users[m] for m in members])
                if not room.messages.exists():
                    # bulk_create sends no post_save signals, hence no broadcasts: seeding
                    # works before Redis is up and nobody is subscribed yet anyway.
                    Message.objects.bulk_create(
                        Message(room=room, author=users[author], text=text)
                        for author, text in WELCOME[name]
                    )
        self.stdout.write(f"Demo logins (password for all: {PASSWORD}):")
        for username in USERS:
            rooms = [name for name, members in ROOMS.items() if username in members]
            self.stdout.write(f"  {username:<6} member of: {', '.join(rooms)}")
