"""The execution layer: sandboxed, persistent IPython kernels.

`Kernel(...)` (base.py) makes a `LocalKernel` (local_kernel.py: bwrap or no isolation) or a
`GatewayKernel` (gateway.py: on a Jupyter Kernel Gateway); asking for any kernel name here imports
both, which registers them with `Kernel`. `KernelOptions` (options.py) holds every option a kernel
takes, with its default, checked. inside/ holds what runs in the sandbox (boot, reaper, the
gateway's remote half).

The names are imported when first used (PEP 562): a module that needs only `ExecResult` or
`KernelOptions` (the conversation tree, a parser) does not import the kernel client with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Kernel, KernelError
    from .gateway import GatewayKernel
    from .gateway_client import GatewayError
    from .base import close_all_kernels
    from .isolation import IsolationError, bwrap_available, default_isolation
    from .limits import MAX_LIMITS, MAX_MB, Limits
    from .local_kernel import LocalKernel
    from .options import KernelOptions
    from .pool import KernelPool
    from .quota import default_growth_mb
    from .result import ExecResult, RichOutput
    from .safecopy import copy_in
    from .safefs import entry_kind, walk_files
    from .saferm import remove_tree

# Where each public name lives; the light ones first, then the kernels (which need jupyter_client).
HOMES = {"ExecResult": "result", "RichOutput": "result", "KernelOptions": "options", "Limits": "limits",
         "MAX_LIMITS": "limits", "MAX_MB": "limits", "default_growth_mb": "quota",
         "IsolationError": "isolation", "bwrap_available": "isolation", "default_isolation": "isolation",
         # the host side of a workspace: nothing followed, nothing opened that is not a plain file
         "entry_kind": "safefs", "walk_files": "safefs", "copy_in": "safecopy", "remove_tree": "saferm",
         "Kernel": "base", "KernelError": "base", "close_all_kernels": "base", "LocalKernel": "local_kernel",
         "GatewayKernel": "gateway", "GatewayError": "gateway_client", "KernelPool": "pool"}
KERNEL_NAMES = {"Kernel", "KernelError", "LocalKernel", "GatewayKernel", "GatewayError", "KernelPool"}


def __getattr__(name: str) -> Any:
    if name not in HOMES:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    if name in KERNEL_NAMES:
        from . import gateway, local_kernel  # noqa: F401 - registers the two kinds with Kernel
    value = getattr(importlib.import_module(f"{__name__}.{HOMES[name]}"), name)
    globals()[name] = value
    return value


__all__ = list(HOMES)
