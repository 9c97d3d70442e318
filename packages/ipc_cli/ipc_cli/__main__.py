"""``python -m ipc_cli``: same as the ``ipc`` command."""

from ipc_cli.main import main

main()
