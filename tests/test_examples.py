"""The examples: their task files validate, their reference solutions pass their own checks inside
the sandbox kernel, and the quickstart passes end to end with the embedded model."""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.core.messages import Usage
from agent.frontends.runner import run_check
from agent.frontends.task_sandbox import check_task_sandboxes, task_kernel_options
from agent.frontends.tasks import load_task, load_tasks
from sandbox import Kernel

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent / "kernelchat"


def test_example_task_files_validate():
    tasks = load_tasks(sorted(EXAMPLES.glob("*.toml")))
    assert {t.name for t in tasks} >= {"quickstart", "titanic", "finetune"}
    titanic = next(t for t in tasks if t.name == "titanic")
    assert titanic.source_files()[0] == (EXAMPLES / "data" / "titanic.csv").resolve()
    assert any(c.kernel == "accuracy >= 0.75" for c in titanic.checks)


def test_the_documented_commands_need_no_sandbox_flag(tmp_path):
    """No example asks for more than the run's default sandbox, so `kernelchat run examples/X.toml`
    runs as the README and the files' comments write it (a looser [sandbox] would stop it, exit 2)."""
    check_task_sandboxes(load_tasks(sorted(EXAMPLES.glob("*.toml")) + [ROOT / "tests/data/two_prompts.toml"]),
                         {}, tmp_path)


def run_solution(name: str, tmp_path: Path) -> tuple[list, float, object]:
    """Run examples/solutions/NAME.py in a sandboxed kernel set up as the task would set it up, then
    evaluate the task's checks: kernel expressions in the kernel, answer checks on the printed output."""
    task = load_task(EXAMPLES / f"{name}.toml")
    ws = tmp_path / "ws"
    ws.mkdir()
    options = task_kernel_options(task, {"gpu": "auto"}, ws)  # as `kernelchat run --gpu` sets it up
    with Kernel(workspace=ws, **options) as k:
        for src in task.source_files():
            k.upload(src)
        t0 = time.monotonic()
        res = k.execute((EXAMPLES / "solutions" / f"{name}.py").read_text())
        seconds = time.monotonic() - t0
        assert res.status == "ok", res.traceback or res.message
        chat = SimpleNamespace(kernel=lambda: k, usage=Usage())
        results = [run_check(c, chat, res.stdout, ws) for c in task.checks]
    print(f"{name}: {res.stdout.strip()} [{seconds:.1f} s]")
    return results, seconds, res


def test_titanic_reference_solution_passes_its_checks(tmp_path):
    results, seconds, res = run_solution("titanic", tmp_path)
    assert all(r.passed for r in results), results
    acc = float(res.stdout.split("validation accuracy")[1].split()[0])
    assert acc >= 0.75 and seconds < 60


def test_finetune_reference_solution_loss_falls(tmp_path):
    results, seconds, res = run_solution("finetune", tmp_path)
    assert all(r.passed for r in results), results
    assert seconds < 120


@pytest.mark.slow
def test_quickstart_end_to_end_with_the_embedded_model(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN), "run", str(EXAMPLES / "quickstart.toml"), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                               "KERNELCHAT_KEEP_ALIVE": "0"})  # no server left behind (test_resident tests it)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    t = summary["tasks"][0]
    assert t["status"] == "passed" and "1267650600228229401496703205376" in t["answers"][0]
    assert {p.name for p in (out / "quickstart").iterdir()} >= {"transcript.json", "transcript.md", "report.html",
                                                                "usage.json"}
    assert (out / "summary.md").is_file() and "quickstart" in proc.stdout
