"""`kernelchat run` twice into the same --out: the first run's sandboxed code left a tree thousands of
folders deep, locked folders and a link to a host folder in its workspace; the second run starts from
an empty workspace all the same (Python 3.11's shutil.rmtree raised RecursionError here), and the
host folder behind the link is untouched."""

from pathlib import Path

import pytest

from agent.frontends.runner import run_tasks
from agent.frontends.tasks import parse_task
from agent.models.scripted import ScriptedBackend, python_call

DEEP = """
import os
os.symlink({host!r}, 'host-link')
here = os.getcwd()
os.makedirs('deep'); os.chdir('deep')
for i in range(1500):
    os.mkdir('d'); os.chdir('d')
    if i == 700:
        os.symlink({host!r}, 'link'); open('result.txt', 'w').write('stale')
os.makedirs('locked/inner'); os.chmod('locked/inner', 0); os.chmod('locked', 0)
os.chdir(here); open('result.txt', 'w').write('stale'); os.makedirs('box'); os.chmod('box', 0)
print('planted')
"""


@pytest.mark.timeout(240)
def test_a_rerun_into_a_deep_locked_workspace_starts_empty(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep.txt").write_text("host file")
    tmp_path.chmod(0o755)  # as root the kernel runs as its own uid: it must reach the link's target
    text = 'prompts = ["a"]\n[[checks]]\nfile_exists = "result.txt"\n'
    task = parse_task(text, tmp_path / "t.toml")
    out = tmp_path / "out"
    first = run_tasks([task], out, {task.name: ScriptedBackend([python_call(DEEP.format(host=str(host))), "ok"])},
                      show_progress=False)[0]
    ws = out / "t" / "workspace"
    assert first.error is None and (ws / "deep" / "d").is_dir() and first.checks[0].passed, first
    second = run_tasks([task], out, {task.name: ScriptedBackend([python_call("import os; print(sorted(os.listdir()))"),
                                                                  "ok"])}, show_progress=False)[0]
    assert second.error is None and second.status == "failed", second  # result.txt is gone: the check fails
    assert sorted(p.name for p in ws.iterdir()) == ["outputs"]
    assert sorted(p.name for p in host.iterdir()) == ["keep.txt"] and (host / "keep.txt").read_text() == "host file"
    assert Path(ws).is_dir() and not (ws / "host-link").exists()
