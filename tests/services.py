"""Fixtures that start real services on 127.0.0.1 (filled in by the storage work)."""
