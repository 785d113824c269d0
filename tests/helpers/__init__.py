"""Plumbing shared by the test modules (which never import one another): raw HTTP calls (``http``),
waiting with a deadline (``wait``), and the throw-away redis-server (``redis``)."""
