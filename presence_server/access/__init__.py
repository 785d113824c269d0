"""Access Manager: request signatures (signing.py), tokens (tokens.py), grant requests (grants.py), what
each route needs (needs.py) and the check of every request to an Access Manager keyset (control.py)."""
