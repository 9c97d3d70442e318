"""``python -m ipc_router``: same as the ``ipc-router`` command."""

import sys

from ipc_router.api.main import main

sys.exit(main())
