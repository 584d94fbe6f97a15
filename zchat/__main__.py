"""``python -m zchat``: the same command line as the ``zchat`` script."""

from zchat.cli import main

main()
