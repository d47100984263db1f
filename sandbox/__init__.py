"""The execution layer: sandboxed, persistent IPython kernels.

`Kernel(...)` (base.py) makes a `LocalKernel` (local.py: bwrap or no isolation) or a `GatewayKernel`
(gateway.py: on a Jupyter Kernel Gateway); importing both here registers them with `Kernel`."""

from .base import Kernel, KernelError
from .gateway import GatewayKernel
from .gateway_client import GatewayError
from .isolation import IsolationError, bwrap_available, default_isolation
from .limits import Limits
from .local_kernel import LocalKernel
from .pool import KernelPool
from .result import ExecResult, RichOutput

__all__ = ["Kernel", "LocalKernel", "GatewayKernel", "KernelError", "GatewayError", "KernelPool", "ExecResult",
           "RichOutput", "Limits", "IsolationError", "bwrap_available", "default_isolation"]
