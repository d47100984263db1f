"""The execution layer: sandboxed, persistent IPython kernels."""

from .isolation import IsolationError, bwrap_available, default_isolation
from .kernel import Kernel, KernelError
from .limits import Limits
from .pool import KernelPool
from .result import ExecResult, RichOutput

__all__ = ["Kernel", "KernelError", "KernelPool", "ExecResult", "RichOutput", "Limits",
           "IsolationError", "bwrap_available", "default_isolation"]
