"""The publisher's exceptions: each says what happened to the watermark and what to do."""

from __future__ import annotations


class PublishError(RuntimeError):
    """Delivery failed or the watermark could not be written; the watermark was not moved."""


class SchemaMissing(RuntimeError):
    """The CDC tables are not there."""


class PublisherBusy(RuntimeError):
    """Another publisher holds the lock for this topic."""


class PublisherFenced(PublishError):
    """A newer publisher of the topic registered the transactional id: this one is a zombie
    and must stop (it can never commit again)."""
