"""``python -m ipc_cli``: same as the ``ipc`` command."""

from ipc_cli._entry import main

main()
