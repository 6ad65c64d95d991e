import turbo_tasks as turbo


class AnnouncementStream(turbo.Stream):
    """Imported by tests.testapp.streams: must be registered here only."""


class AuditedModelStream(turbo.ModelStream):
    """A shared base for ModelStreams; abstract, so it needs no model."""

    class Meta:
        abstract = True
