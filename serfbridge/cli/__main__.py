"""``python -m serfbridge.cli``: the same as the ``serfbridge`` command."""

from serfbridge.cli import main

main()
