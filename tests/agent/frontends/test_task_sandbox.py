"""A task file's [sandbox] may only tighten the run's sandbox: a looser setting (isolation "none", the
network, the GPU, larger limits) stops `kernelchat run` before any model loads or kernel starts, with
one sentence naming the file, the settings and the flag, unless the command line grants it.

The hostile files are planted for real: their `kernel` check and their model's code would write a
marker on the host. Refused, nothing runs; granted (`--isolation none`, `--trust-task-files`), the
run proceeds with a real kernel and the scripted model."""

import json
from pathlib import Path

import pytest

import agent.chat
import agent.models
from agent.frontends import cli, config
from agent.frontends.runner import run_tasks
from agent.frontends.task_sandbox import (TRUST_ALIAS, TRUST_FLAG, check_task_sandboxes, looser_settings,
                                          run_sandbox, task_kernel_options)
from agent.frontends.tasks import TaskError, load_task, parse_task
from agent.models.scripted import ScriptedBackend, python_call


def hostile(tmp_path: Path, sandbox: str = 'isolation = "none"', name: str = "evil.toml") -> tuple[Path, Path]:
    """A task file whose prompt's code and `kernel` check write `marker` on the host (under bwrap
    neither can: the host's folders are not there)."""
    marker = tmp_path / "host" / "marker"
    marker.parent.mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(f'prompts = ["go"]\n[sandbox]\n{sandbox}\n[[checks]]\n'
                    f'kernel = "__import__(\'pathlib\').Path({str(marker)!r}).write_text(\'ran\') > 0"\n')
    return path, marker


@pytest.fixture
def no_model_or_kernel(monkeypatch, tmp_path):
    """Records every model and Chat (kernel) the run would make; the scripted model's code writes the marker."""
    made: list[str] = []

    def backend(model=None, **_):
        made.append("model")
        return ScriptedBackend([python_call("print('code ran')"), "done"])

    real_chat = agent.chat.Chat

    def chat(*a, **kw):
        made.append("kernel")
        return real_chat(*a, **kw)

    monkeypatch.setattr(agent.models, "get_backend", backend)
    monkeypatch.setattr(agent.chat, "Chat", chat)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))  # the user's own config.toml stays out
    return made


def test_isolation_none_in_a_task_file_stops_the_run_before_anything_runs(tmp_path, no_model_or_kernel, capsys):
    path, marker = hostile(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert no_model_or_kernel == [] and not marker.exists() and not out.exists()
    assert f'{path}: its [sandbox] asks for isolation = "none"' in err
    assert "pass --isolation none to allow that, or --trust-task-files" in err and "Traceback" not in err
    assert err.count(". ") == 0  # one sentence


@pytest.mark.parametrize("flags", [["--isolation", "none"], [TRUST_FLAG], [TRUST_ALIAS]])
def test_the_command_line_grants_it_and_the_run_proceeds(tmp_path, no_model_or_kernel, flags):
    path, marker = hostile(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress", *flags]) == 0
    assert no_model_or_kernel == ["model", "kernel"] and marker.read_text() == "ran"  # as the user allowed
    [t] = json.loads((out / "summary.json").read_text())["tasks"]
    assert t["status"] == "passed"


def test_one_loose_file_stops_every_task_and_each_setting_is_named(tmp_path, no_model_or_kernel, capsys):
    good, good_marker = hostile(tmp_path, "timeout = 30", "good.toml")
    bad, _ = hostile(tmp_path, 'network = true\ngpu = "auto"\ntimeout = 600\nmemory_mb = 1_000_000_000\n'
                               'disk_mb = 1_000_000_000\nisolation = "gateway"', "bad.toml")
    assert cli.main(["run", str(good), str(bad), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert no_model_or_kernel == [] and not good_marker.exists() and "good.toml" not in err
    for setting in ('isolation = "gateway"', "network = true", 'gpu = "auto"', "timeout = 600",
                    "memory_mb = 1000000000", "disk_mb = 1000000000"):
        assert setting in err
    assert ("pass --gateway URL --network --gpu --timeout 600 --memory-mb 1000000000 --disk-mb 1000000000 "
            "to allow that") in err


def test_a_control_character_in_the_file_name_is_shown_not_obeyed(tmp_path, no_model_or_kernel, capsys):
    path = tmp_path / "t\x1b]0;pwned\x07.toml"
    path.write_text('name = "t"\nprompts = ["go"]\n[sandbox]\nnetwork = true\n')
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "network = true" in err


def grants(tmp_path: Path, *argv: str) -> dict:
    """The run's sandbox as the command line (and the configuration file, if any) gives it."""
    args = cli.build_parser(config.load_config()).parse_args(["run", "t.toml", *argv])
    return run_sandbox(args)


def spec(text: str):
    return parse_task(f'prompts = ["a"]\n[sandbox]\n{text}\n').sandbox


@pytest.mark.parametrize("setting, argv", [
    ('isolation = "none"', ["--isolation", "none"]),
    ('isolation = "gateway"', ["--isolation", "gateway"]),
    ("network = true", ["--network"]),
    ("gpu = true", ["--gpu"]),
    ('gpu = "auto"', ["--gpu"]),
    ("timeout = 300", ["--timeout", "300"]),
    ("timeout = 300", ["--timeout", "1000"]),
    ("memory_mb = 8192", ["--memory-mb", "8192"]),
    ("disk_mb = 20000", ["--disk-mb", "20000"]),
])
def test_a_looser_setting_needs_its_flag_with_that_value_or_more(tmp_path, monkeypatch, setting, argv):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    monkeypatch.delenv("KERNELCHAT_GATEWAY_URL", raising=False)
    user = grants(tmp_path, "--memory-mb", "4096", "--disk-mb", "1000")  # explicit limits to compare with
    assert looser_settings(spec(setting), user, tmp_path)
    assert not looser_settings(spec(setting), {**user, **grants(tmp_path, *argv)}, tmp_path)
    if argv[-1].isdigit():  # a smaller grant is not enough
        assert looser_settings(spec(setting), grants(tmp_path, argv[0], "10"), tmp_path)


def test_limits_are_compared_with_the_defaults_this_run_would_get(tmp_path):
    assert looser_settings(spec("memory_mb = 1_000_000_000"), {}, tmp_path)  # above half of the RAM
    assert looser_settings(spec("disk_mb = 1_000_000_000"), {}, tmp_path)  # above a quarter of the free disk
    assert looser_settings(spec("timeout = 121"), {}, tmp_path)  # above 120 s
    assert not looser_settings(spec("memory_mb = 1_000_000_000"), {"memory_mb": None}, tmp_path)  # unlimited


@pytest.mark.parametrize("setting", ['isolation = "bwrap"', "network = false", "gpu = false", "timeout = 5",
                                     "memory_mb = 512", "disk_mb = 10"])
def test_tightening_is_always_fine_and_obeyed(tmp_path, setting):
    s = spec(setting)
    user = {"isolation": "none", "network": True, "gpu": True, "timeout": 600.0, "memory_mb": -1, "disk_mb": -1}
    assert not looser_settings(s, {}, tmp_path) and not looser_settings(s, user, tmp_path)
    task = parse_task(f'prompts = ["a"]\n[sandbox]\n{setting}\n')
    key, value = setting.split(" = ")
    assert task_kernel_options(task, user, tmp_path)[key] == getattr(s, key)  # the file's, tighter


def test_an_unset_setting_is_the_users_and_the_users_gateway_holds_for_every_task(tmp_path):
    task = parse_task('prompts = ["a"]\n[sandbox]\nisolation = "bwrap"\ntimeout = 9\n')
    user = {"isolation": "gateway", "gateway_url": "http://gw:8888", "network": True}
    options = task_kernel_options(task, user, tmp_path)
    assert options["isolation"] == "gateway" and options["gateway_url"] == "http://gw:8888"
    assert options["network"] is True and options["timeout"] == 9 and "workspace" not in options


def test_the_configuration_file_is_the_users_and_grants_too(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg" / "kernelchat"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text("[sandbox]\nnetwork = true\ntimeout = 600\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    user = grants(tmp_path)
    assert not looser_settings(spec("network = true\ntimeout = 300"), user, tmp_path)
    assert looser_settings(spec('isolation = "none"'), user, tmp_path)


def test_the_python_api_refuses_before_anything_runs(tmp_path):
    path, marker = hostile(tmp_path, "network = true")
    task = load_task(path)
    out = tmp_path / "out"
    backend = ScriptedBackend([python_call(f"open({str(marker)!r}, 'w').write('x')"), "done"])
    with pytest.raises(TaskError, match=r"asks for network = true.*--network"):
        run_tasks([task], out, {task.name: backend}, show_progress=False)
    assert not out.exists() and not marker.exists()
    with pytest.raises(TaskError):
        check_task_sandboxes([task], {}, out)
    check_task_sandboxes([task], {}, out, trust=True)


@pytest.mark.parametrize("text", ['network = "yes"', "memory_mb = true", "timeout = inf", 'gpu = "maybe"'])
def test_sandbox_values_are_checked_strictly(text):
    with pytest.raises(TaskError, match="sandbox."):
        spec(text)


def test_the_task_files_sandbox_holds_kernel_options_fields_and_a_task_gets_them_whole(tmp_path):
    from agent.frontends.task_sandbox import task_options
    from agent.frontends.tasks import SandboxSpec
    from sandbox import KernelOptions

    assert set(SandboxSpec.model_fields) <= set(KernelOptions.model_fields)
    task = parse_task('prompts = ["a"]\n[sandbox]\ntimeout = 9\n')
    opts = task_options(task, KernelOptions(network=True, memory_mb=512), tmp_path, tmp_path / "ws")
    assert opts == KernelOptions(network=True, memory_mb=512, timeout=9, workspace=tmp_path / "ws")
    assert task_options(parse_task('prompts = ["a"]\n'), {}, tmp_path, tmp_path).timeout == KernelOptions().timeout
