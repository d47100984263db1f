"""End to end with the real embedded model: the README's main job, the API, and the OpenAI path
through a real `transformers serve`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import Chat
from agent.models.scripted import ScriptedBackend
from agent.smallmodel.strategy import SMALL_MODEL_SYSTEM

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "kernelchat"


def test_main_job_one_shot_cli_json(tmp_path):
    out = subprocess.run([str(BIN), "What is 2**100? Use Python.", "--json", "--save", str(tmp_path / "c.json")],
                         capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                           "HOME": str(Path.home()),
                                                                           "KERNELCHAT_KEEP_ALIVE": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert "1267650600228229401496703205376" in data["answer"]
    assert data["steps"] >= 1 and data["tool_calls"] and "2**100" in data["tool_calls"][0]["code"].replace(" ", "")
    assert data["usage"]["prompt_tokens"] > 0 and data["usage"]["completion_tokens"] > 0
    assert data["usage"]["cost_usd"] == 0 and data["model"] == "hf:smollm2"
    saved = Chat.load(tmp_path / "c.json", backend=ScriptedBackend([]))  # no model loaded
    assert [m.role for m in saved.messages()][:3] == ["system", "user", "assistant"]


def test_main_job_again_finds_the_model_kept_loaded(tmp_path):
    """The command line's default: the first command starts the resident model server, the next
    connects to it; `kernelchat models` lists it and `--stop` stops it."""
    import shutil
    import tempfile

    runtime = tempfile.mkdtemp(prefix="kc-", dir="/tmp")  # a short socket path
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "XDG_RUNTIME_DIR": runtime,
           "XDG_DATA_HOME": str(tmp_path / "data"), "KERNELCHAT_KEEP_ALIVE": "120"}

    def kernelchat(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=300, env=env)

    try:
        for _ in range(2):
            out = kernelchat("What is 2**100? Use Python.", "--json", "--timings")
            assert out.returncode == 0, out.stderr[-2000:]
            assert "1267650600228229401496703205376" in json.loads(out.stdout)["answer"]
            timings = json.loads(out.stderr.split("timings: ", 1)[1].splitlines()[0])
            assert timings["import"] < 1.0  # torch and transformers are the server's, not the command's
        kept = json.loads(kernelchat("models", "--json").stdout)["resident"]
        assert [(k["model"], k["users"]) for k in kept] == [("hf:smollm2", 0)]
        assert kept[0]["idle_left_s"] > 60 and kept[0]["rss_mb"] > 100
        stop = kernelchat("models", "--stop")
        assert stop.returncode == 0 and f"stopped hf:smollm2 (pid {kept[0]['pid']})" in stop.stdout
        assert json.loads(kernelchat("models", "--json").stdout)["resident"] == []
    finally:
        kernelchat("models", "--stop")
        shutil.rmtree(runtime, ignore_errors=True)


def test_main_job_readable_in_a_terminal():
    out = subprocess.run([str(BIN), "What is 2**100? Use Python.", "--no-save"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1267650600228229401496703205376" in out.stdout and "python" in out.stdout and "answer" in out.stdout


def test_api_edit_with_the_real_model(local_backend, tmp_path):
    with Chat(backend=local_backend, workspace=tmp_path) as chat:
        assert chat("What is 2**10? Use Python.") == "1024"
        assert chat.edit(0, "What is 3**4? Use Python.") == "81"
        assert len(chat.branches()) == 2


def test_openai_path_against_transformers_serve(openai_server, tmp_path):
    import openai

    served = openai.OpenAI(base_url=openai_server, api_key="unused").models.list().data[0].id
    # The server hides that SmolLM2 has no tool training: ask for fenced code, as for the local model.
    with Chat(model=f"openai:{served}", base_url=openai_server, workspace=tmp_path, answer_from_output=True,
              system=SMALL_MODEL_SYSTEM, temperature=0) as chat:
        answer = chat("What is 2**100? Use Python.")
        assert answer == "1267650600228229401496703205376", [m.content or m.tool_calls for m in chat.messages()[1:]]
        assert chat.usage.prompt_tokens > 0
