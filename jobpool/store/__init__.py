"""The storage layer: the only code that holds SQL and talks to Postgres (asyncpg).

Functions are named entity-first (``job_insert_many``, ``dlq_replay``) and take an
asyncpg connection as their first argument, so every write also works inside a
caller's own transaction.
"""
