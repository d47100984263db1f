"""`KernelOptions`: every option of a kernel, each default written once, built once and passed whole.

`Kernel(timeout=5)` is `Kernel(KernelOptions(timeout=5))`; a bad value is the check's one sentence
(a plain ValueError), a keyword that is no option a TypeError naming it, as Python's own."""

from __future__ import annotations

import ast
from pathlib import Path

import pydantic
import pytest

from sandbox import GatewayKernel, Kernel, KernelOptions, KernelPool, LocalKernel
from sandbox.options import DEFAULTS, GATEWAY_OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def test_a_kernel_left_to_its_defaults_has_the_models():
    k = Kernel(isolation="none", start=False)
    try:
        assert k.timeout == KernelOptions().timeout == KernelOptions.model_fields["timeout"].default == 120.0
        assert k.options == KernelOptions(isolation="none") and k.options.model_fields_set == {"isolation"}
        assert (k.network, k.gpu, k.env, k.idle_cpu_limit, k.keep_workspace) == (False, False, {}, None, None)
    finally:
        k.close()


def test_the_timeout_default_is_written_once():
    """No module of sandbox/ or agent/frontends/ but sandbox/options.py writes the 120.0 s default."""
    found = []
    for folder in ("sandbox", "agent/frontends"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "sandbox" / "options.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and type(node.value) is float and node.value == 120.0:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_kernel_takes_the_options_whole(tmp_path):
    opts = KernelOptions(workspace=tmp_path, isolation="none", timeout=7, memory_mb=512)
    k = Kernel(opts, start=False)
    try:
        assert isinstance(k, LocalKernel) and k.options is opts
        assert (k.workspace, k.timeout, k.limits.memory_mb) == (tmp_path.resolve(), 7.0, 512)
    finally:
        k.close()
    k = Kernel(opts, start=False, timeout=3)  # keywords beside: they change those options
    try:
        assert k.timeout == 3.0 and k.options == opts.updated(timeout=3) and opts.timeout == 7.0
    finally:
        k.close()


def test_the_kind_follows_the_options():
    k = Kernel(KernelOptions(gateway_url="http://127.0.0.1:9"), start=False)
    try:
        assert isinstance(k, GatewayKernel) and k.gateway_url == "http://127.0.0.1:9"
    finally:
        k.close()


def test_an_unknown_keyword_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"^Kernel\(\) got an unexpected keyword argument 'timout' "
                                        r"\(did you mean 'timeout'\?\)$"):
        Kernel(timout=5, start=False)
    with pytest.raises(TypeError, match=r"^KernelOptions\(\) got an unexpected keyword argument 'colour'$"):
        KernelOptions(colour="red")
    with pytest.raises(TypeError, match=r"^KernelPool\(\) got an unexpected keyword argument 'timout'"):
        KernelPool(size=0, timout=1)
    with pytest.raises(TypeError, match=r"takes one KernelOptions or keyword arguments, got '/tmp' \(str\)"):
        Kernel("/tmp")


@pytest.mark.parametrize("fields, says", [
    ({"network": "false"}, "network must be True or False, got 'false' (str)"),
    ({"timeout": 0}, "timeout must be a positive number of seconds, got 0 (int)"),
    ({"memory_mb": 0}, "memory_mb must be a whole number from 1 to 1,000,000,000,000 or None (unlimited), got 0 (int)"),
    ({"isolation": "docker"}, "isolation must be 'bwrap', 'none' or 'gateway', got 'docker'"),
    ({"keep_workspace": "yes"}, "keep_workspace must be None, True or False, got 'yes'"),
    ({"workspace": 3}, "workspace must be a folder's path (a str or os.PathLike) or None, got 3 (int)"),
    ({"request_timeout": -1}, "request_timeout must be a positive number of seconds, got -1 (int)"),
    ({"remote_output_chars": 0}, "remote_output_chars must be a whole number greater than 0, got 0 (int)"),
])
def test_a_bad_value_is_the_checks_one_sentence(fields, says):
    with pytest.raises(ValueError) as e:
        KernelOptions(**fields)
    assert type(e.value) is ValueError and str(e.value) == says


def test_options_are_frozen_and_their_gpu_auto_is_kept():
    opts = KernelOptions(gpu="auto", env={"A": "1"})
    assert opts.gpu == "auto" and opts.env == {"A": "1"}  # "auto" is resolved by the kernel, on its machine
    with pytest.raises(pydantic.ValidationError):
        opts.timeout = 5
    assert "tok" not in repr(KernelOptions(gateway_token="tok"))  # a secret stays out of logs


def test_gateway_options_are_refused_by_a_local_kernel():
    with pytest.raises(TypeError, match="kernel_name: option of a gateway kernel"):
        Kernel(isolation="none", kernel_name="python3", start=False)
    assert set(GATEWAY_OPTIONS) < set(KernelOptions.model_fields)
    assert all(getattr(DEFAULTS, name) == KernelOptions.model_fields[name].default for name in KernelOptions.model_fields)


def test_the_pool_checks_its_options_at_once_and_leaves_out_the_workspace(tmp_path):
    with pytest.raises(ValueError, match="network must be True or False"):
        KernelPool(size=0, network="yes")
    pool = KernelPool(0, KernelOptions(workspace=tmp_path, isolation="none"), timeout=9)
    assert pool.options.workspace is None and pool.options.timeout == 9.0 and pool.options.isolation == "none"
    pool.close()
