"""Submission API: the async ``Client`` and its thin ``SyncClient`` facade."""

from jobpool.client.client import Client
from jobpool.client.sync import SyncClient
from jobpool.client.validation import Item

__all__ = ["Client", "Item", "SyncClient"]
