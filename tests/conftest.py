import pytest

from sandbox import Kernel


@pytest.fixture(scope="session")
def shared_kernel():
    """One sandboxed kernel for the tests that neither kill nor wedge it."""
    with Kernel(timeout=60) as k:
        yield k


@pytest.fixture
def kernel(tmp_path):
    """A fresh sandboxed kernel for tests that break things."""
    with Kernel(workspace=tmp_path, timeout=60) as k:
        yield k
