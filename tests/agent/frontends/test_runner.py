"""`kernelchat run`: which model each task runs on (said before it starts, shown in the results), and
how each turn ended, the same in the printed table, summary.md and summary.json."""

import json

import pytest

import agent.models
from agent.frontends import cli
from agent.frontends.runner import TaskResult, model_line, outcome_text, run_tasks, task_outcome, write_summary
from agent.frontends.tasks import parse_task
from agent.models.scripted import ScriptedBackend

EMBEDDED_LINE = "no model in the task and no OPENAI_API_KEY: using the embedded hf:smollm2"


@pytest.fixture
def no_model_env(monkeypatch):
    for var in ("OPENAI_API_KEY", "KERNELCHAT_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def task(tmp_path, text: str, name: str = "t"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return parse_task(text, path)


def test_model_line_says_which_model_and_why(tmp_path, no_model_env):
    bare = task(tmp_path, 'prompts = ["a"]\n')
    assert model_line(bare) == f"t: model hf:smollm2 ({EMBEDDED_LINE})"
    assert model_line(bare, model="gpt-4o") == "t: model gpt-4o (--model)"
    assert model_line(task(tmp_path, 'model = "hf:qwen"\nprompts = ["a"]\n')) == "t: model hf:qwen (the task file)"
    assert "the replies of c.json" in model_line(bare, replay="c.json")
    no_model_env.setenv("KERNELCHAT_MODEL", "gpt-4.1")
    assert model_line(bare) == "t: model gpt-4.1 (no model in the task: KERNELCHAT_MODEL)"
    no_model_env.delenv("KERNELCHAT_MODEL")
    no_model_env.setenv("OPENAI_API_KEY", "sk-test")
    assert model_line(bare) == "t: model gpt-4o-mini (no model in the task: the default with OPENAI_API_KEY)"


def test_the_fallback_is_said_before_the_task_and_the_model_is_in_every_result(tmp_path, no_model_env, capsys):
    asked = []

    def scripted(model=None, **_):  # the embedded model's stand-in: no weights in a unit test
        asked.append(model)
        return ScriptedBackend(["hi"], model="hf:smollm2")

    no_model_env.setattr(agent.models, "get_backend", scripted)
    no_model_env.setenv("COLUMNS", "200")  # the printed table on one line per task
    (tmp_path / "t.toml").write_text('prompts = ["a"]\n')
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "t.toml"), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert EMBEDDED_LINE in " ".join(captured.err.split()) and asked == [None]
    assert "hf:smollm2" in captured.out and "answered" in captured.out  # the printed table
    [t] = json.loads((out / "summary.json").read_text())["tasks"]
    assert t["model"] == "hf:smollm2" and t["outcomes"] == ["answered"] and t["answers"] == ["hi"]
    assert "| t | hf:smollm2 | passed | answered | 0/0 |" in (out / "summary.md").read_text()
    assert "Model: hf:smollm2; outcome: answered" in (out / "t" / "transcript.md").read_text()


def test_a_budget_stop_is_the_outcome_of_the_prompt_it_stopped(tmp_path, capsys):
    t = task(tmp_path, 'prompts = ["a", "b"]\n[budget]\nmax_steps = 1\n')
    out = tmp_path / "out"
    [r] = run_tasks([t], out, {t.name: ScriptedBackend(["hi", "never sent"])}, show_progress=False)
    assert r.status == "failed" and r.model == "local:scripted"
    assert r.answers == ["hi", ""] and r.outcomes[0] == "answered"
    assert r.outcomes[1].startswith("budget exceeded: ") and r.outcomes[1] == r.error
    write_summary([r], out)
    [j] = json.loads((out / "summary.json").read_text())["tasks"]
    assert j["outcomes"] == r.outcomes
    md = (out / "summary.md").read_text()
    assert f"| t | local:scripted | failed | prompt 2: {r.outcomes[1]} |" in md
    from agent.frontends.runner import summary_table
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(summary_table([r]))
    assert "prompt 2: budget exceeded" in console.export_text()


def test_outcome_texts():
    assert outcome_text("answered", "7") == "answered"
    assert outcome_text("stopped", "[stopped after 5 attempts without printing a value]") == \
        "stopped after 5 attempts without printing a value"
    assert outcome_text("max_steps", "some text\n\n[stopped after 3 steps without a final answer]") == \
        "stopped after 3 steps without a final answer"
    assert outcome_text("max_steps", "") == "max_steps reached"
    assert outcome_text("interrupted", "partial") == "interrupted"
    r = TaskResult(task="x", status="failed", outcomes=["answered", "max_steps reached"])
    assert task_outcome(r) == "prompt 2: max_steps reached"
    assert task_outcome(r.model_copy(update={"outcomes": ["max_steps reached"]})) == "max_steps reached"
    assert task_outcome(r.model_copy(update={"outcomes": []})) == "not run"


def test_a_pipe_in_a_name_does_not_break_the_summary_table(tmp_path):
    r = TaskResult(task="a|b", status="passed", model="m|n", outcomes=["answered"])
    write_summary([r], tmp_path)
    assert "| a\\|b | m\\|n | passed | answered |" in (tmp_path / "summary.md").read_text()


def test_a_max_steps_stop_reads_the_same_in_the_table_the_summary_and_the_transcript(tmp_path):
    t = task(tmp_path, 'prompts = ["a"]\nmax_steps = 1\n')
    out = tmp_path / "out"
    from agent.models.scripted import python_call

    [r] = run_tasks([t], out, {t.name: ScriptedBackend([python_call("x = 1")])}, show_progress=False)
    note = "stopped after 1 steps without a final answer"
    assert r.outcomes == [note] and r.answers == [f"[{note}]"]
    write_summary([r], out)
    assert json.loads((out / "summary.json").read_text())["tasks"][0]["outcomes"] == [note]
    assert f"| {note} |" in (out / "summary.md").read_text()
    assert f"outcome: {note}" in (out / "t" / "transcript.md").read_text()


def test_run_takes_the_configuration_files_model_for_tasks_without_one(tmp_path, no_model_env, capsys):
    asked = []

    def scripted(model=None, base_url=None, keep_alive=0.0, **_):
        asked.append((model, base_url, keep_alive))
        return ScriptedBackend(["hi"], model=model or "hf:smollm2")

    no_model_env.setattr(agent.models, "get_backend", scripted)
    no_model_env.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    no_model_env.delenv("KERNELCHAT_KEEP_ALIVE")
    (tmp_path / "cfg" / "kernelchat").mkdir(parents=True)
    (tmp_path / "cfg" / "kernelchat" / "config.toml").write_text(
        'model = "openai:local-qwen"\nbase_url = "http://127.0.0.1:9/v1"\nkeep_alive = 42\n')
    (tmp_path / "bare.toml").write_text('prompts = ["a"]\n')
    (tmp_path / "named.toml").write_text('model = "hf:other"\nprompts = ["a"]\n')
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "bare.toml"), str(tmp_path / "named.toml"), "--out", str(out),
                     "--no-progress"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "bare: model openai:local-qwen (no model in the task: the configuration file)" in err
    assert "named: model hf:other (the task file)" in err
    # the file's base_url goes with the file's model only; keep_alive to every local model
    assert asked == [("openai:local-qwen", "http://127.0.0.1:9/v1", 42.0), ("hf:other", None, 42.0)]
    no_model_env.setenv("KERNELCHAT_MODEL", "gpt-4.1")  # the variable wins over the file
    asked.clear()
    assert cli.main(["run", str(tmp_path / "bare.toml"), "--out", str(tmp_path / "out2"), "--no-progress"]) == 0
    assert asked == [(None, "http://127.0.0.1:9/v1", 42.0)]


class RecordingGuides(ScriptedBackend):
    """Declares grammar-constrained calls and records what each request asked for."""

    def __init__(self, replies):
        from agent.core.backend import Capabilities

        super().__init__(replies, capabilities=Capabilities(streaming=False, constrains_calls=True))
        self.asked: list[dict] = []

    def stream(self, messages, tools=None, **kw):
        self.asked.append(kw)
        yield from super().stream(messages, tools, **kw)


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-constrain-calls"], False)])
def test_a_task_files_constrain_calls_reaches_the_model_and_the_flag_beats_it(tmp_path, monkeypatch, flag, expected):
    backend = RecordingGuides(["hi"])
    monkeypatch.setattr(agent.models, "get_backend", lambda *a, **k: backend)
    (tmp_path / "t.toml").write_text('constrain_calls = true\nprompts = ["a"]\n[sandbox]\nisolation = "none"\n')
    assert cli.main(["run", str(tmp_path / "t.toml"), "--out", str(tmp_path / "out"), "--no-progress",
                     "--isolation", "none", *flag]) == 0
    assert [a.get("constrain_calls") for a in backend.asked] == [expected]
