"""The configuration file: flags' defaults, strict checks, and the precedence flag > env > file > built-in."""

from __future__ import annotations

import json

import pytest

from agent.frontends import cli
from agent.frontends.cli import build_parser, prompt_parser
from agent.frontends.config import apply, config_path, load_config


@pytest.fixture(autouse=True)
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for var in ("KERNELCHAT_MODEL", "OPENAI_BASE_URL", "KERNELCHAT_GATEWAY_URL", "KERNELCHAT_KEEP_ALIVE"):
        monkeypatch.delenv(var, raising=False)
    path = config_path()
    path.parent.mkdir(parents=True)
    assert path == tmp_path / "cfg" / "kernelchat" / "config.toml"
    return path


GOOD = """model = "from-file"
base_url = "http://localhost:8000/v1"
[budget]
max_usd = 2
max_steps = 4
[sandbox]
network = true
memory_mb = 2048
timeout = 30
"""


def parsed(*argv: str):
    p = prompt_parser()
    apply(p, load_config())
    return p.parse_args(list(argv))


def test_the_file_sets_defaults_and_flags_win(cfg):
    cfg.write_text(GOOD)
    a = parsed()
    assert (a.model, a.base_url, a.max_usd, a.max_steps, a.network, a.memory_mb, a.timeout) == \
        ("from-file", "http://localhost:8000/v1", 2, 4, True, 2048, 30)
    assert a.max_tokens is None and a.gpu is None  # not in the file: not given, so the built-in defaults
    b = parsed("--model", "flag", "--max-steps", "7", "--memory-mb", "512")
    assert (b.model, b.max_steps, b.memory_mb) == ("flag", 7, 512)


def test_environment_variables_win_over_the_file(cfg, monkeypatch):
    cfg.write_text(GOOD)
    monkeypatch.setenv("KERNELCHAT_MODEL", "from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env.example/v1")
    a = parsed()
    assert a.model is None and a.base_url is None  # left to the variables, which the backends read
    assert parsed("--model", "flag").model == "flag"


def test_keep_alive_from_the_file_and_the_environment_over_it(cfg, monkeypatch):
    from agent.frontends.options import keep_alive

    cfg.write_text("keep_alive = 60\n")
    assert keep_alive(parsed()) == 60.0 and keep_alive(parsed("--keep-alive", "5")) == 5.0
    monkeypatch.setenv("KERNELCHAT_KEEP_ALIVE", "0")
    assert keep_alive(parsed()) == 0.0  # the variable wins over the file


def test_exec_takes_the_sandbox_values_only(cfg):
    cfg.write_text(GOOD)
    a = build_parser(load_config()).parse_args(["exec", "print(1)"])
    assert (a.network, a.memory_mb, a.timeout) == (True, 2048, 30) and not hasattr(a, "max_usd")


def test_no_file_is_no_configuration():
    assert parsed().model is None and parsed().max_steps == 10


@pytest.mark.parametrize("text, words", [
    ("modle = 'x'\n", ["unknown key 'modle'", "remove it or fix its spelling"]),
    ("[sandbox]\nnetwrk = true\n", ["unknown key 'sandbox.netwrk'"]),
    ("[budget]\nmax_usd = 'lots'\n", ["budget.max_usd", "valid number", "'lots'"]),
    ("[sandbox]\nnetwork = 'yes'\n", ["sandbox.network", "valid boolean"]),
    ("[sandbox]\nmemory_mb = 1.5\n", ["sandbox.memory_mb", "valid integer"]),
    ("[budget]\nmax_steps = 0\n", ["budget.max_steps", "greater than 0"]),
    ("[sandbox]\nisolation = 'docker'\n", ["sandbox.isolation"]),
    ("keep_alive = -5\n", ["keep_alive", "greater than or equal to 0"]),
    ("model = [1\n", ["not valid TOML"]),
])
def test_a_bad_file_is_one_sentence_naming_the_file_and_key_exit_2(cfg, capsys, text, words):
    cfg.write_text(text)
    assert cli.main(["hi", "--json"]) == 2
    out, err = capsys.readouterr()
    message = json.loads(out)["error"]
    assert message.startswith(f"{cfg}:") and "Traceback" not in err and "\n" not in message
    for w in words:
        assert w in message
    assert cli.main(["exec", "print(1)"]) == 2  # every command that reads it


# -- the kernel's options: the model's defaults < the file < the environment < the flags -----------

def test_kernel_options_take_the_file_over_the_defaults_and_the_flags_over_the_file(cfg):
    from agent.frontends.options import kernel_options

    cfg.write_text(GOOD)
    k = kernel_options(parsed())
    assert (k.network, k.memory_mb, k.timeout, k.gpu, k.disk_mb) == (True, 2048, 30.0, False, -1)
    k = kernel_options(parsed("--timeout", "9", "--memory-mb", "512", "--gpu"))
    assert (k.network, k.memory_mb, k.timeout, k.gpu) == (True, 512, 9.0, True)


def test_the_gateway_variable_wins_over_the_files_gateway_and_the_flag_over_both(cfg, monkeypatch):
    from agent.frontends.options import kernel_options
    from sandbox import Kernel

    cfg.write_text('[sandbox]\ngateway = "http://file.example:8888"\n')
    k = kernel_options(parsed())
    assert (k.isolation, k.gateway_url) == ("gateway", "http://file.example:8888")
    monkeypatch.setenv("KERNELCHAT_GATEWAY_URL", "http://env.example:8888")
    k = kernel_options(parsed())
    assert (k.isolation, k.gateway_url) == ("gateway", None)  # still a gateway: the variable's
    kernel = Kernel(k, start=False)
    try:
        assert kernel.gateway_url == "http://env.example:8888"
    finally:
        kernel.close()
    assert kernel_options(parsed("--gateway", "http://flag.example:1")).gateway_url == "http://flag.example:1"


def test_the_sandbox_section_holds_kernel_options_fields():
    from agent.frontends.config import SandboxConfig
    from sandbox import KernelOptions

    assert set(SandboxConfig.model_fields) - {"gateway"} <= set(KernelOptions.model_fields)
