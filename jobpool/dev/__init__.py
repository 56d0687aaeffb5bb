"""``jobpool dev``: a whole pool on one machine, without Kubernetes.

``embedded`` starts (or finds) the embedded PostgreSQL and keeps the dev state file;
``session`` supervises a session (database, migrations, pool, ring, history
maintenance); ``processes`` runs the worker processes the ring asks for; ``view`` shows
what is going on. The command itself (``jobpool.cli.dev``) only parses options.
"""
