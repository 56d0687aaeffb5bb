"""``python -m jobpool``: the same as the ``jobpool`` command."""

from jobpool.cli import main

main()
