"""The kernel starts while the model loads, and --timings says where the time went (scripted model,
real kernels)."""

from __future__ import annotations

import json
import time

import pytest

from agent.frontends import cli
from agent.frontends.warmup import EarlyKernel, Timings, process_age
from agent.models.scripted import ScriptedBackend, python_call


def test_the_kernel_is_up_by_the_time_a_slow_model_has_loaded(monkeypatch, capsys, tmp_path):
    seen, early = {}, []

    def slow_model(*args, **kwargs):
        # A model loading until the kernel, started before it, is up (the event, not a fixed time:
        # a start run after the load, not beside it, never comes), and a little longer.
        [kernel] = early
        kernel.thread.join(timeout=120)
        assert kernel.seconds is not None, "the kernel did not come up while the model loaded"
        time.sleep(1)
        return ScriptedBackend([python_call("print(6 * 7)"), "42"])

    real = EarlyKernel.__init__

    def keep(self, options):
        real(self, options)
        early.append(self)

    def record(chat_init):
        def init(self, *args, **kwargs):
            chat_init(self, *args, **kwargs)
            seen["alive"] = self.started_kernel is not None and self.started_kernel.alive
        return init

    from agent.chat import Chat
    monkeypatch.setattr("agent.chat.get_backend", slow_model)
    monkeypatch.setattr(Chat, "__init__", record(Chat.__init__))
    monkeypatch.setattr(EarlyKernel, "__init__", keep)
    assert cli.main(["What is 6 * 7?", "--no-save", "--timings", "--workspace", str(tmp_path)]) == 0
    assert seen["alive"]
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("timings: "))
    phases = json.loads(line.removeprefix("timings: "))
    assert set(phases) >= {"startup", "import", "model_load", "kernel_start", "generation", "execution", "total"}
    assert phases["model_load"] >= 1 and 0 < phases["kernel_start"] < phases["model_load"]
    assert phases["execution"] > 0 and phases["total"] >= phases["model_load"]


def test_a_model_that_does_not_load_leaves_no_kernel_behind(monkeypatch, capsys):
    made = []

    def fail(*args, **kwargs):
        raise ValueError("no such model")

    real = EarlyKernel.__init__

    def keep(self, options):
        real(self, options)
        made.append(self)

    monkeypatch.setattr("agent.chat.get_backend", fail)
    monkeypatch.setattr(EarlyKernel, "__init__", keep)
    assert cli.main(["hi", "--no-save"]) == 2
    assert "no such model" in capsys.readouterr().err
    [early] = made
    assert not early.kernel.alive and not early.kernel.workspace.exists()  # closed, its temporary folder gone


def test_timings_count_from_the_process_start():
    assert 0 < process_age() < 3600
    t = Timings()
    with t.phase("import"):
        time.sleep(0.05)
    t.add("generation", 1.5)
    t.add("generation", 0.5)
    phases = json.loads(t.line().removeprefix("timings: "))
    assert phases["import"] >= 0.05 and phases["generation"] == 2.0 and phases["total"] >= phases["startup"]


@pytest.mark.parametrize("flag", ["--timings"])
def test_the_flag_is_in_the_help(flag, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert flag in capsys.readouterr().out


def test_the_one_shot_builds_the_kernels_options_once_and_passes_the_kernel_alone(monkeypatch, tmp_path):
    """EarlyKernel gets the KernelOptions; the Chat gets that kernel, and no kernel option beside it."""
    from agent.chat import Chat
    from sandbox import Kernel, KernelOptions

    given, seen = [], {}
    real = EarlyKernel.__init__

    def keep(self, options):
        given.append(options)
        real(self, options)

    def init(self, *args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(EarlyKernel, "__init__", keep)
    monkeypatch.setattr(Chat, "__init__", init)
    assert cli.main(["hi", "--no-save", "--workspace", str(tmp_path), "--timeout", "7", "--isolation", "none"]) == 2
    assert given == [KernelOptions(workspace=tmp_path, timeout=7, isolation="none")]
    assert isinstance(seen["kernel"], Kernel) and seen["kernel"].options is given[0]
    assert not set(seen) & set(KernelOptions.model_fields)
