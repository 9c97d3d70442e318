"""The package's names load their modules on first use, and all of them are public."""

from __future__ import annotations

import ast
import subprocess
import sys

import ipc_client_sdk as sdk


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return loaded


def test_every_lazy_name_is_in_all() -> None:
    assert {*sdk._HOME, "__version__"} == set(sdk.__all__)
    assert set(sdk.__all__) <= set(dir(sdk))


def test_importing_the_package_loads_no_dependency() -> None:
    assert _loaded_after("import ipc_client_sdk", ("nats", "pydantic", "msgpack")) == []


def test_a_client_loads_neither_serving_nor_pubsub_nor_nkeys() -> None:
    heavy = (
        "ipc_client_sdk._calling",
        "ipc_client_sdk._pubsub",
        "ipc_client_sdk._serving",
        "ipc_client_sdk._tracing",
        "nkeys",
        "nacl",
    )
    code = "from ipc_client_sdk import IPCClient\nIPCClient('nats://127.0.0.1:1', name='t')"
    assert _loaded_after(code, heavy) == []


def test_every_public_name_imports_by_name() -> None:
    names = ", ".join(sdk.__all__)
    assert _loaded_after(f"from ipc_client_sdk import {names}", ()) == []
