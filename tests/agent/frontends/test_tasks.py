"""Task files, checks, the runner, reports, exit codes, parallel runs, record and replay.

Runner tests use the ScriptedBackend (deterministic, no model) with real sandboxed kernels; the
replay test serves a cassette recorded with the embedded model, offline, with no model loaded."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.frontends import cli
from agent.core.backend import Capabilities
from agent.models.scripted import ScriptedBackend, python_call
from agent.models.cassette import Cassette, CassetteError, RecordingBackend, ReplayBackend
from agent.frontends.runner import run_tasks, exit_code, write_summary
from agent.frontends.tasks import TaskError, load_task, load_tasks, parse_task

DATA = Path(__file__).resolve().parents[2] / "data"


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- validation ------------------------------------------------------------------------------------

def test_valid_task_defaults(tmp_path):
    t = load_task(write(tmp_path, 'prompts = ["hi"]\n[[checks]]\nanswer_contains = "x"\n', "hello.toml"))
    assert t.name == "hello" and t.max_steps == 10 and t.sandbox.gpu is None and t.checks[0].kind == "answer_contains"


def test_toml_syntax_error_has_path_and_line(tmp_path):
    p = write(tmp_path, 'model = "m"\nprompts = ["a"\nname = 1\n')
    with pytest.raises(TaskError, match=rf"{p}:3: invalid TOML"):
        load_task(p)


@pytest.mark.parametrize("text, line, field, msg", [
    ('prompts = ["a"]\ncolour = 1\n', 2, "colour", "unknown field"),
    ('model = 3\nprompts = ["a"]\n', 1, "model", "valid string"),
    ('model = "m"\n', 1, "prompts", "Field required"),
    ('prompts = ["a"]\n\n[budget]\nmax_tokens = 10\nmax_usd = -1\n', 5, "budget.max_usd", "greater than 0"),
    ('prompts = ["a"]\n[budget]\nmax_dollars = 1\n', 3, "budget.max_dollars", "unknown field"),
    ('prompts = ["a"]\n[budget]\nmax_seconds = "soon"\n', 3, "budget.max_seconds", "valid number"),
    ('prompts = ["a"]\n[sandbox]\nisolation = "docker"\n', 3, "sandbox.isolation", "bwrap"),
    ('prompts = ["a"]\n[[checks]]\nanswer_contains = "x"\n\n[[checks]]\nkernel = "acc >="\n', 6,
     "checks[1].kernel", "not a Python expression"),
    ('prompts = ["a"]\n[[checks]]\nanswer_matches = "("\n', 3, "checks[0].answer_matches", "regular expression"),
    ('prompts = ["a"]\n[[checks]]\nanswer_contains = "x"\n[[checks]]\ntolerance = 1\n', 4, "checks[1]",
     "exactly one of"),
    ('prompts = ["a", " "]\n', 1, "prompts", "must not be empty"),
])
def test_field_errors_name_path_line_and_field(tmp_path, text, line, field, msg):
    p = write(tmp_path, text)
    with pytest.raises(TaskError) as e:
        load_task(p)
    assert f"{p}:{line}: {field}: " in str(e.value) and msg in str(e.value), str(e.value)


def test_missing_file_is_reported(tmp_path):
    p = write(tmp_path, 'prompts = ["a"]\nfiles = ["data/nope.csv"]\n')
    with pytest.raises(TaskError, match=r":2: files: 'data/nope.csv' not found"):
        load_task(p)


def test_all_invalid_files_reported_and_nothing_runs(tmp_path, capsys):
    good = write(tmp_path, 'prompts = ["a"]\n', "good.toml")
    bad1 = write(tmp_path, 'prompts = 1\n', "bad1.toml")
    bad2 = write(tmp_path, 'prompts = ["a"]\n[budget]\nmax_steps = 0\n', "bad2.toml")
    out = tmp_path / "out"
    assert cli.main(["run", str(good), str(bad1), str(bad2), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad1.toml:1: prompts" in err and "bad2.toml:3: budget.max_steps" in err
    assert not out.exists()


def test_missing_task_file_exit_2(tmp_path):
    assert cli.main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2


def test_duplicate_names_get_suffixes(tmp_path):
    a = write(tmp_path, 'name = "x"\nprompts = ["a"]\n', "a.toml")
    b = write(tmp_path, 'name = "x"\nprompts = ["a"]\n', "b.toml")
    assert [t.name for t in load_tasks([a, b])] == ["x", "x-2"]


# -- running with the scripted backend ---------------------------------------------------------------

def run_scripted(tmp_path, text: str, replies: list, name: str = "t", parallel: int = 1, files=()):
    for f in files:
        (tmp_path / f).write_text("a,b\n1,2\n")
    task = parse_task(text, write(tmp_path, text, f"{name}.toml"))
    out = tmp_path / "out"
    results = run_tasks([task], out, {task.name: ScriptedBackend(replies)}, show_progress=False)
    return results[0], out


TASK = """
prompts = ["compute", "and now"]
files = ["data.csv"]
[budget]
max_steps = 10
[[checks]]
answer_contains = "forty-two"
[[checks]]
answer_matches = '\\d+ is the answer'
[[checks]]
answer_number = 42.0
tolerance = 0.01
[[checks]]
file_exists = "result.txt"
[[checks]]
file_exists = "data.csv"
[[checks]]
kernel = "accuracy > 0.75"
[[checks]]
max_cost_usd = 0.01
"""


def test_all_check_kinds_pass_and_report_written(tmp_path):
    replies = [python_call("accuracy = 0.8\nopen('result.txt', 'w').write('ok')\n"
                           "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()"),
               "done", "forty-two: 42 is the answer"]
    r, out = run_scripted(tmp_path, TASK, replies, files=["data.csv"])
    assert r.status == "passed", r
    assert [c.passed for c in r.checks] == [True] * 7
    assert r.checks[5].detail == "accuracy = 0.8"
    assert r.steps == 3 and r.answers == ["done", "forty-two: 42 is the answer"] and r.prompt_tokens > 0
    folder = out / "t"
    for f in ("transcript.json", "transcript.md", "report.html", "usage.json"):
        assert (folder / f).is_file(), f
    page = (folder / "report.html").read_text()
    assert "data:image/png;base64," in page and "passed" in page and "accuracy &gt; 0.75" in page
    assert json.loads((folder / "usage.json").read_text())["steps"] == 3
    assert json.loads((folder / "transcript.json").read_text())["format"] == "kernelchat.conversation/1"
    assert "# Task t: PASSED" in (folder / "transcript.md").read_text()


def test_failing_checks_say_why(tmp_path):
    replies = [python_call("accuracy = 0.5"), "the answer is 41", "nothing more"]
    r, _ = run_scripted(tmp_path, TASK, replies, files=["data.csv"])
    assert r.status == "failed"
    by = {c.check.split(":")[0]: c for c in r.checks}
    assert not by["answer_contains"].passed and "nothing more" in by["answer_contains"].detail
    assert not by["answer_number"].passed
    assert [c.passed for c in r.checks if c.check.startswith("file_exists")] == [False, True]
    kernel = next(c for c in r.checks if c.check.startswith("kernel"))
    assert not kernel.passed and kernel.detail == "accuracy = 0.5"


def test_kernel_check_on_undefined_name_fails_cleanly(tmp_path):
    r, _ = run_scripted(tmp_path, 'prompts = ["a"]\n[[checks]]\nkernel = "accuracy > 0.75"\n', ["no code"])
    assert r.status == "failed" and "NameError" in r.checks[0].detail


def test_budget_stop_is_a_failure(tmp_path):
    text = 'prompts = ["a"]\n[budget]\nmax_steps = 1\n[[checks]]\nanswer_contains = "x"\n'
    r, _ = run_scripted(tmp_path, text, [python_call("1"), "x"])
    assert r.status == "failed" and "budget exceeded" in r.error and r.steps == 1


def test_cost_check(tmp_path):
    r, _ = run_scripted(tmp_path, 'prompts = ["a"]\n[[checks]]\nmax_cost_usd = 0\n', ["hi"])
    assert r.status == "passed" and r.checks[0].detail == "cost $0.0000"


def test_summary_and_exit_codes(tmp_path):
    ok, out = run_scripted(tmp_path, 'prompts = ["a"]\n[[checks]]\nanswer_contains = "hi"\n', ["hi"], name="ok")
    bad, _ = run_scripted(tmp_path, 'prompts = ["a"]\n[[checks]]\nanswer_contains = "no"\n', ["hi"], name="bad")
    assert exit_code([ok]) == 0 and exit_code([ok, bad]) == 1
    assert exit_code([ok, bad.model_copy(update={"status": "error"})]) == 2
    write_summary([ok, bad], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 1 and [t["status"] for t in summary["tasks"]] == ["passed", "failed"]
    md = (out / "summary.md").read_text()
    assert "| ok | local:scripted | passed | answered | 1/1 |" in md and "| bad | local:scripted | failed | answered | 0/1 |" in md


def test_parallel_tasks_each_have_their_own_kernel(tmp_path):
    tasks, backends = [], {}
    for i in range(3):
        t = parse_task(f'prompts = ["a"]\n[[checks]]\nkernel = "x == {i}"\n', write(tmp_path, "", f"p{i}.toml"))
        tasks.append(t)
        # each cell sleeps 1 s: run one after another this would take over 3 s
        backends[t.name] = ScriptedBackend([python_call(f"import time, os; time.sleep(1); x = {i}; os.getpid()"),
                                            "done"])
    t0 = time.monotonic()
    results = run_tasks(tasks, tmp_path / "out", backends, parallel=3, show_progress=False)
    wall = time.monotonic() - t0
    assert [r.status for r in results] == ["passed"] * 3, results
    assert all((tmp_path / "out" / f"p{i}" / "workspace").is_dir() for i in range(3))
    assert wall < sum(r.seconds for r in results), (wall, [r.seconds for r in results])


# -- record and replay ---------------------------------------------------------------------------------

def test_record_then_replay_with_scripted_backend(tmp_path):
    text = 'prompts = ["a", "b"]\n[[checks]]\nanswer_contains = "4"\n[[checks]]\nkernel = "y == 4"\n'
    task = parse_task(text, write(tmp_path, text, "rr.toml"))
    cassette = Cassette(tmp_path / "c.json")
    ws = tmp_path / "rec" / "rr" / "workspace"
    rec = RecordingBackend(ScriptedBackend([python_call("y = 2 + 2\nprint(y)"), "first", "it is 4"]),
                           cassette, task="rr", workspace=ws.resolve())
    r1 = run_tasks([task], tmp_path / "rec", {"rr": rec}, show_progress=False)[0]
    assert r1.status == "passed"
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["format"] == "kernelchat.cassette/1" and len(data["interactions"]) == 3
    assert data["interactions"][0]["messages"][1]["content"] == "a"  # readable: the request is stored
    replay = ReplayBackend(tmp_path / "c.json", task="rr", workspace=(tmp_path / "rep" / "rr" / "workspace").resolve())
    r2 = run_tasks([task], tmp_path / "rep", {"rr": replay}, show_progress=False)[0]
    assert r2.status == "passed" and r2.answers == r1.answers and r2.steps == r1.steps
    assert r2.prompt_tokens == r1.prompt_tokens


def test_a_small_models_repeated_attempts_replay_in_recorded_order(tmp_path):
    """Attempts afresh send the same request again: each recorded reply is served once, in order."""
    text = 'prompts = ["What is 6 times 7?"]\n[[checks]]\nanswer_contains = "42"\n'
    task = parse_task(text, write(tmp_path, text, "rr.toml"))
    small = ScriptedBackend(["```python\nprint(totl)\n```", "```python\nprint(6 * 7)\n```"],
                            capabilities=Capabilities(tools=False))
    cassette = Cassette(tmp_path / "c.json")
    r1 = run_tasks([task], tmp_path / "rec", {"rr": RecordingBackend(small, cassette, task="rr")},
                   show_progress=False)[0]
    keys = [i["key"] for i in json.loads((tmp_path / "c.json").read_text())["interactions"]]
    assert r1.status == "passed" and len(keys) == 2 and keys[0] == keys[1]
    r2 = run_tasks([task], tmp_path / "rep", {"rr": ReplayBackend(tmp_path / "c.json", task="rr")},
                   show_progress=False)[0]
    assert r2.status == "passed" and r2.answers == r1.answers == ["42"] and r2.steps == r1.steps == 2


def test_replay_of_unrecorded_request_names_task_step_and_difference(tmp_path):
    text = 'prompts = ["a"]\n'
    task = parse_task(text, write(tmp_path, text, "rr.toml"))
    cassette = Cassette(tmp_path / "c.json")
    rec = RecordingBackend(ScriptedBackend([python_call("print(6 * 7)"), "42"]), cassette, task="rr")
    assert run_tasks([task], tmp_path / "rec", {"rr": rec}, show_progress=False)[0].status == "passed"
    # the replayed cell prints something else: request 2 differs from the recording
    data = json.loads((tmp_path / "c.json").read_text())
    first = data["interactions"][0]["reply"]["message"]["tool_calls"][0]
    first["arguments"] = json.dumps({"code": "print(6 * 8)"})
    data["interactions"][1]["messages"][2]["tool_calls"][0]["function"]["arguments"] = first["arguments"]
    (tmp_path / "c.json").write_text(json.dumps(data))
    r = run_tasks([task], tmp_path / "rep", {"rr": ReplayBackend(tmp_path / "c.json", task="rr")},
                  show_progress=False)[0]
    assert r.status == "error" and exit_code([r]) == 2
    assert "task 'rr', request 2" in r.error and "message 3 (tool) differs in content" in r.error, r.error
    assert "'48'" in r.error and "'42'" in r.error


def test_replay_unknown_task_or_missing_cassette_is_setup_error(tmp_path, capsys):
    task = write(tmp_path, 'prompts = ["a"]\n', "other.toml")
    assert cli.main(["run", str(task), "--replay", str(DATA / "two_prompts.cassette.json"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "no recording for task 'other'" in capsys.readouterr().err
    assert cli.main(["run", str(task), "--replay", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 2
    assert "no cassette" in capsys.readouterr().err
    with pytest.raises(CassetteError):
        ReplayBackend(tmp_path / "none.json")


def test_replay_recorded_real_model_session_offline(tmp_path):
    """A full session of the embedded model (2 prompts), served from the committed cassette: offline,
    and no model (nor the local backend) is loaded."""
    out = tmp_path / "out"
    probe = ("import sys; from agent.frontends import cli; code = cli.main(['run', %r, '--replay', %r, '--out', %r, "
             "'--no-progress']); loaded = 'agent.models.transformers_backend' in sys.modules or 'transformers' in sys.modules; "
             "print('LOADED' if loaded else 'NOT-LOADED'); sys.exit(code)"
             % (str(DATA / "two_prompts.toml"), str(DATA / "two_prompts.cassette.json"), str(out)))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "",
           "KERNELCHAT_MODEL": "", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NOT-LOADED" in proc.stdout and "passed" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    t = summary["tasks"][0]
    assert t["status"] == "passed" and t["model"] == "hf:smollm2" and t["steps"] >= 2
    assert "1267650600228229401496703205376" in t["answers"][0] and "81" in t["answers"][1]
    assert (out / "two_prompts" / "report.html").is_file() and summary["replay"]


def test_model_that_cannot_load_is_setup_error_and_nothing_runs(tmp_path, capsys):
    task = write(tmp_path, 'prompts = ["a"]\n')
    out = tmp_path / "out"
    assert cli.main(["run", str(task), "--model", str(tmp_path / "nope.gguf"), "--out", str(out)]) == 2
    assert "setup failed" in capsys.readouterr().err and not out.exists()


def test_record_and_replay_exclude_each_other(tmp_path):
    task = write(tmp_path, 'prompts = ["a"]\n')
    assert cli.main(["run", str(task), "--record", "a.json", "--replay", "b.json"]) == 2


# -- hostile task files and hostile workspaces -----------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b", "a\\\\b", ".", "..", "", " ", ".hidden", "a\\u0000b",
                                  "a\\u001b]0;t\\u0007", "x" * 101, "summary.json", "SUMMARY.md"])
def test_a_task_name_is_a_plain_name(tmp_path, name):
    p = write(tmp_path, f'name = "{name}"\nprompts = ["a"]\n')
    with pytest.raises(TaskError) as e:
        load_task(p)
    assert str(e.value).startswith(f"{p}:1: name: "), str(e.value)
    assert "\n" not in str(e.value)


def test_a_name_from_the_file_name_is_checked_too(tmp_path):
    p = write(tmp_path, 'prompts = ["a"]\n', ".hidden.toml")
    with pytest.raises(TaskError, match=r"named after its file, '\.hidden'.*set name ="):
        load_task(p)


def test_a_bad_name_writes_nothing_outside_out(tmp_path, capsys):
    p = write(tmp_path, 'name = "../escaped"\nprompts = ["a"]\n')
    out = tmp_path / "runs" / "out"
    assert cli.main(["run", str(p), "--out", str(out)]) == 2
    assert "name: must be a plain name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


def test_suffixed_names_never_collide(tmp_path):
    files = [write(tmp_path, f'name = "{n}"\nprompts = ["a"]\n', f"{i}.toml") for i, n in enumerate(["x", "x-2", "X"])]
    assert [t.name for t in load_tasks(files)] == ["x", "x-2", "X-3"]


@pytest.mark.parametrize("value", ["../outside", "/etc/passwd", "a/../../b"])
def test_file_exists_must_stay_in_the_workspace(tmp_path, value):
    p = write(tmp_path, f'prompts = ["a"]\n[[checks]]\nfile_exists = "{value}"\n')
    with pytest.raises(TaskError, match=r":3: checks\[0\]\.file_exists: must be a path relative to the workspace"):
        load_task(p)


@pytest.mark.parametrize("value", ["/etc/passwd", "../secret.txt", "data/../../secret.txt", "~/.ssh/id_rsa",
                                   "..\\\\secret.txt", ""])
def test_files_come_only_from_the_task_files_folder(tmp_path, value):
    """A task file is often someone else's: it must not copy the user's files into the sandbox."""
    p = write(tmp_path, f'prompts = ["a"]\nfiles = ["{value}"]\n')
    with pytest.raises(TaskError, match=r":2: files: .* must be a path inside the task file's folder"):
        load_task(p)


def test_a_link_out_of_the_task_folder_is_refused_and_never_copied(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "data.csv").symlink_to(secret)
    (folder / "data").symlink_to(tmp_path)
    for name in ("data.csv", "data", "data/secret.txt"):
        p = write(folder, f'prompts = ["a"]\nfiles = ["{name}"]\n')
        with pytest.raises(TaskError, match=rf"{p}:2: files: '{name}' leads out of the task file's folder"):
            load_task(p)
    # parse_task does not look at the disk: the run refuses it then, as a setup error, copying nothing
    task = parse_task('prompts = ["a"]\nfiles = ["data.csv"]\n', folder / "t.toml")
    r = run_tasks([task], tmp_path / "out", {task.name: ScriptedBackend(["hi"])}, show_progress=False)[0]
    assert r.status == "error" and "leads out of the task file's folder" in r.error
    assert not (tmp_path / "out" / "t" / "workspace" / "data.csv").exists()


def test_links_inside_a_copied_folder_are_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    (tmp_path / "task" / "folder").mkdir(parents=True)
    (tmp_path / "task" / "folder" / "ok.txt").write_text("ok\n")
    (tmp_path / "task" / "folder" / "leak.txt").symlink_to(secret)
    text = 'prompts = ["a"]\nfiles = ["folder"]\n'
    task = load_task(write(tmp_path / "task", text))
    r = run_tasks([task], tmp_path / "out", {task.name: ScriptedBackend(["hi"])}, show_progress=False)[0]
    ws = tmp_path / "out" / "t" / "workspace" / "folder"
    assert r.status == "passed" and (ws / "ok.txt").read_text() == "ok\n" and not (ws / "leak.txt").exists()


def test_invalid_utf8_names_the_file_and_line(tmp_path, capsys):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'prompts = ["a"]\nsystem = "caf\xe9"\n')
    with pytest.raises(TaskError, match=rf"^{p}:2: not UTF-8 text \(byte 0xe9 at offset 29\)"):
        load_task(p)
    assert cli.main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{p}:2: not UTF-8" in err and "Traceback" not in err


@pytest.mark.timeout(60)
def test_a_catastrophic_pattern_fails_in_bounded_time(tmp_path):
    text = ('prompts = ["a"]\n[[checks]]\nanswer_matches = "(a+)+$"\n'
            '[[checks]]\nanswer_matches = "a{40}b"\n')
    t0 = time.monotonic()
    r, _ = run_scripted(tmp_path, text, ["a" * 40 + "b"])
    assert time.monotonic() - t0 < 30
    slow, fine = r.checks
    assert not slow.passed and slow.detail == "the pattern took longer than 2 s"
    assert fine.passed  # an ordinary pattern still works, in the same child-process way


def test_ordinary_patterns_are_cheap_and_exact():
    from agent.frontends.checks import regex_search

    t0 = time.monotonic()
    assert regex_search(r"\d+ is", "x 42 is it") and not regex_search("^is", "x is")
    assert regex_search("CAFÉ", "café ✓", re.IGNORECASE) and regex_search("\u2603", "snow \u2603 \udcff")
    assert time.monotonic() - t0 < 2  # four child processes: about 15-30 ms each here


PLANT = """
import os
victim, victim_dir = {victim!r}, {victim_dir!r}
os.remove('data.csv'); os.symlink(victim, 'data.csv')          # the next copy would write the host file
os.remove('notes.txt'); os.mkfifo('notes.txt')                  # a copy onto a FIFO would block forever
import shutil; shutil.rmtree('folder'); os.symlink(victim_dir, 'folder')  # a folder copy into a host folder
os.symlink(victim, 'result.txt')                                # a link must not make file_exists pass
os.symlink(victim_dir, 'linked')
open('real.txt', 'w').write('x'); os.symlink(os.path.abspath('real.txt'), 'inner.txt')  # a link, even inside
"""


@pytest.mark.timeout(240)
def test_rerun_into_a_planted_workspace_touches_no_host_file(tmp_path):
    """Run 1's sandboxed code plants links and a FIFO at the names of the task's files; run 2 with the
    same --out copies the files again: no host file changes, nothing blocks, no check passes by a link."""
    victim, victim_dir = tmp_path / "victim.txt", tmp_path / "victim_dir"
    victim.write_text("host secret\n")
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("host file\n")
    (tmp_path / "notes.txt").write_text("notes\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("task file\n")
    text = ('prompts = ["a"]\nfiles = ["data.csv", "notes.txt", "folder"]\n'
            '[[checks]]\nfile_exists = "result.txt"\n[[checks]]\nfile_exists = "linked/keep.txt"\n'
            '[[checks]]\nfile_exists = "folder/keep.txt"\n[[checks]]\nfile_exists = "inner.txt"\n')
    code = PLANT.format(victim=str(victim), victim_dir=str(victim_dir))
    r1, out = run_scripted(tmp_path, text, [python_call(code), "planted"], files=["data.csv"])
    ws = out / "t" / "workspace"
    assert (ws / "data.csv").is_symlink() and (ws / "linked").is_symlink(), r1  # the plant took
    assert [c.passed for c in r1.checks] == [False, False, False, False], r1.checks  # links do not count
    before = {p: p.read_bytes() for p in (victim, victim_dir / "keep.txt")}
    t0 = time.monotonic()
    r2, _ = run_scripted(tmp_path, text, [python_call("print(open('data.csv').read())"), "rerun"],
                         files=["data.csv"])
    assert time.monotonic() - t0 < 120
    assert r2.error is None, r2
    assert {p: p.read_bytes() for p in before} == before  # no host file written through a link
    assert sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"]
    assert (ws / "data.csv").read_text() == "a,b\n1,2\n" and not (ws / "data.csv").is_symlink()
    assert (ws / "notes.txt").read_text() == "notes\n" and (ws / "folder" / "keep.txt").read_text() == "task file\n"
    assert [c.passed for c in r2.checks] == [False, False, True, False]  # nor leftovers of run 1


def test_a_files_entry_holding_the_report_folder_is_a_setup_error(tmp_path):
    text = 'prompts = ["a"]\nfiles = ["."]\n'
    task = parse_task(text, write(tmp_path, text))
    r = run_tasks([task], tmp_path / "out", {task.name: ScriptedBackend(["hi"])}, show_progress=False)[0]
    assert r.status == "error" and "holds the report folder" in r.error
