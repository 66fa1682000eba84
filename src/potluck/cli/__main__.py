"""``python -m potluck.cli`` runs the ``potluck`` command."""

from potluck.cli.main import main

main()
