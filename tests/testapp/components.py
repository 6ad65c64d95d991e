"""A component declared outside streams.py and imported there (as turbo-django allowed)."""

import turbo_tasks as turbo


class BannerComponent(turbo.BroadcastComponent):
    template_name = "components/alert.html"
