"""Limits past what the rlimits and cgroups they become can hold are one sentence naming the option
and its range (before, `memory_mb=10**20` reached setrlimit in the kernel's child: SubprocessError,
'Exception occurred in preexec_fn'); the largest allowed values still start a kernel."""

import os
import resource

import pytest

from sandbox import Kernel
from sandbox.limits import MAX_LIMITS, Limits, rlimits


@pytest.mark.parametrize("name", sorted(MAX_LIMITS))
def test_each_limit_past_its_range_is_one_sentence(name):
    most = MAX_LIMITS[name]
    with pytest.raises(ValueError) as e:
        Kernel(start=False, **{name: most + 1})
    floor = 201 if name == "output_chars" else 1
    assert str(e.value).startswith(f"{name} must be a whole number from {floor:,} to {most:,} or None")
    assert f"got {most + 1} (int)" in str(e.value)


def test_the_largest_limits_still_start_a_kernel():
    """Each at its maximum; rlimits above the host's own hard limit are asked at that limit (raising
    one needs CAP_SYS_RESOURCE, which an ordinary user and root in a container lack)."""
    with Kernel(keep_workspace=False, **MAX_LIMITS) as k:
        r = k.execute("import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[1])")
        assert r.ok, r
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if hard != resource.RLIM_INFINITY:
        assert int(r.stdout) <= hard
    for res, (soft, top) in rlimits(Limits(**MAX_LIMITS), gpu=False, run_uid=os.getuid()).items():
        host = resource.getrlimit(res)[1]
        assert host == resource.RLIM_INFINITY or soft <= top <= host
