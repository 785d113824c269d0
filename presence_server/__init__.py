"""Self-hosted, PubNub-compatible presence server."""

__version__ = "0.1.0"
