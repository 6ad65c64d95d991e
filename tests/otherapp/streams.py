import turbo_tasks as turbo


class AnnouncementStream(turbo.Stream):
    """Imported by tests.testapp.streams: must be registered here only."""


class AuditedModelStream(turbo.ModelStream):
    """A shared base for ModelStreams; abstract, so it needs no model."""

    class Meta:
        abstract = True


class TenantStream(turbo.Stream):
    """An abstract base for per-tenant streams."""

    class Meta:
        abstract = True

    def __init__(self, tenant_id):
        self.tenant_id = tenant_id


class TeamStream(TenantStream):
    """Inherits its base's Meta (abstract = True) but is concrete, as with Django models."""
