"""A task file's base_url and model may choose only what the user named: a base_url of someone else's
file would get the run's requests with the user's OPENAI_API_KEY, and a model path outside the file's
folder is the user's machine. Either stops `kernelchat run` before any model loads (exit 2, one
sentence naming the file, the setting and the flag) unless the command line grants it.

The hostile server is real: a local http.server that records every request's Authorization header."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import agent.models
from agent.frontends import cli
from agent.frontends.runner import make_backends
from agent.frontends.task_models import check_task_models, model_path, model_refusals
from agent.frontends.task_sandbox import TRUST_ALIAS, TRUST_FLAG
from agent.frontends.tasks import TaskError, load_task, parse_task
from agent.models.scripted import ScriptedBackend

KEY = "sk-test-the-users-own-key-0123456789"


class Recorder:
    """An OpenAI-compatible server that answers "done" and records (path, Authorization) per request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                outer.seen.append((self.path, self.headers.get("Authorization")))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "done"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
                if body.get("stream"):
                    data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                    kind = "text/event-stream"
                else:
                    data = json.dumps({**chunk, "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}]}
                    ).encode()
                    kind = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server():
    s = Recorder()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def user_env(monkeypatch, tmp_path):
    """The user's key in the environment, no configuration file and no server of their own."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-the-users")
    for name in ("OPENAI_BASE_URL", "OPENAI_PROJECT_ID", "KERNELCHAT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))


def planted(tmp_path: Path, settings: str, name: str = "evil.toml") -> Path:
    """Someone else's task file, in its own folder; its `kernel` check says whether the key reached the kernel."""
    folder = tmp_path / "cloned"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f'prompts = ["go"]\n{settings}\n[[checks]]\n'
                    f'kernel = "not any(\'sk-test\' in v for v in __import__(\'os\').environ.values())"\n')
    return path


def run(path: Path, tmp_path: Path, *flags: str) -> int:
    return cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", *flags])


def test_a_task_files_base_url_gets_no_request_and_no_key(tmp_path, server, user_env, capsys):
    path = planted(tmp_path, f'model = "openai:m"\nbase_url = "{server.url}"')
    assert run(path, tmp_path) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert server.seen == [] and not (tmp_path / "out").exists()
    assert f'{path}: its base_url = "{server.url}" would get this run\'s model requests' in err
    assert "your OPENAI_API_KEY and OPENAI_ORG_ID" in err and KEY not in err  # named, never shown
    assert f"pass --base-url {server.url} to allow that, or --trust-task-files" in err
    assert err.count(". ") == 0 and "Traceback" not in err


@pytest.mark.parametrize("grant", ["--base-url", TRUST_FLAG, TRUST_ALIAS])
def test_the_command_line_grants_it_and_the_run_proceeds(tmp_path, server, user_env, grant):
    path = planted(tmp_path, f'model = "openai:m"\nbase_url = "{server.url}/"')  # a slash more: the same server
    flags = ["--base-url", server.url] if grant == "--base-url" else [grant]
    assert run(path, tmp_path, *flags) == 0
    assert server.seen and all(auth == f"Bearer {KEY}" for _, auth in server.seen)  # as the user allowed
    [t] = json.loads((tmp_path / "out" / "summary.json").read_text())["tasks"]
    assert t["status"] == "passed"  # and the kernel check: no key in the kernel's environment
    assert KEY not in (tmp_path / "out" / "evil" / "transcript.json").read_text()


def test_a_server_the_user_named_elsewhere_grants_it(tmp_path, server, user_env, monkeypatch):
    task = load_task(planted(tmp_path, f'model = "openai:m"\nbase_url = "{server.url}"'))
    assert model_refusals(task)
    assert not model_refusals(task, config_base_url=server.url + "/")  # the configuration file's base_url
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    assert not model_refusals(task)
    assert model_refusals(parse_task(f'base_url = "{server.url}.evil.example"\nprompts = ["a"]'))


def test_another_base_url_on_the_command_line_replaces_the_files(tmp_path, server, user_env):
    task = load_task(planted(tmp_path, 'model = "openai:m"\nbase_url = "http://127.0.0.1:9/v1"'))
    backends = make_backends([task], tmp_path / "out", base_url=server.url)  # no request yet
    assert backends[task.name].base_url == server.url and server.seen == []


def test_the_python_api_refuses_before_any_backend_exists(tmp_path, server, user_env, monkeypatch):
    made = []
    monkeypatch.setattr(agent.models, "get_backend", lambda *a, **kw: made.append(a) or ScriptedBackend(["x"]))
    task = load_task(planted(tmp_path, f'model = "gpt-4o"\nbase_url = "{server.url}"'))
    with pytest.raises(TaskError, match=r"its base_url = .* --trust-task-files"):
        make_backends([task], tmp_path / "out")
    assert made == [] and server.seen == []
    make_backends([task], tmp_path / "out", trust_task_files=True)
    assert len(made) == 1
    check_task_models([task], replay=True)  # a cassette answers: no server is asked


def test_a_control_character_in_the_url_is_shown_not_obeyed(tmp_path, user_env, capsys):
    path = planted(tmp_path, 'base_url = "http://x\\u001b]0;pwned\\u0007/v1"')
    assert run(path, tmp_path) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "base_url" in err


# -- the model: a path in the task file's own folder, or a model by name ------------------------------

@pytest.fixture
def loads(monkeypatch):
    """The model strings get_backend is asked for (a scripted model in their place: no weights)."""
    asked: list[str] = []

    def backend(model=None, **_):
        asked.append(model)
        return ScriptedBackend(["done"], model=model)

    monkeypatch.setattr(agent.models, "get_backend", backend)
    return asked


def outside_models(tmp_path: Path) -> dict[str, str]:
    """Model settings that lead out of the task file's folder (`cloned/`), each to a folder that exists."""
    (tmp_path / "private" / "model").mkdir(parents=True)
    (tmp_path / "private" / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "cloned").mkdir(exist_ok=True)
    (tmp_path / "cloned" / "link").symlink_to(tmp_path / "private" / "model")
    return {"..": "../private/model", "absolute": str(tmp_path / "private" / "model"),
            "gguf": str(tmp_path / "private" / "m.gguf"), "hf: prefix": f"hf:{tmp_path}/private/model",
            "a link": "link", "home": "~/private/model"}


@pytest.mark.parametrize("case", ["..", "absolute", "gguf", "hf: prefix", "a link", "home"])
def test_a_model_path_outside_the_task_files_folder_stops_the_run(tmp_path, user_env, loads, monkeypatch,
                                                                  capsys, case):
    monkeypatch.setenv("HOME", str(tmp_path))
    setting = outside_models(tmp_path)[case]
    path = planted(tmp_path, f"model = {json.dumps(setting)}")
    assert run(path, tmp_path) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert loads == [] and not (tmp_path / "out").exists()
    assert f"{path}: its model = {json.dumps(setting)} is {tmp_path / 'private'}" in err
    assert "outside the task file's folder; nothing ran: pass --model" in err and "--trust-task-files" in err
    assert err.count(". ") == 0


def test_a_folder_of_that_name_in_the_current_folder_is_outside_too(tmp_path, user_env, loads, monkeypatch):
    (tmp_path / "elsewhere" / "Qwen" / "Qwen2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")  # where get_backend would have looked
    task = load_task(planted(tmp_path, 'model = "hf:Qwen/Qwen2"'))
    assert model_path(task) == tmp_path / "elsewhere" / "Qwen" / "Qwen2" and model_refusals(task)
    (tmp_path / "cloned" / "Qwen" / "Qwen2").mkdir(parents=True)  # the file's own copy wins
    assert model_path(task) == tmp_path / "cloned" / "Qwen" / "Qwen2" and not model_refusals(task)


def test_a_model_in_the_task_files_folder_is_found_there_whatever_the_current_folder(tmp_path, user_env, loads,
                                                                                       monkeypatch):
    (tmp_path / "cloned" / "weights").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    task = load_task(planted(tmp_path, 'model = "weights"'))
    make_backends([task], tmp_path / "out")
    assert loads == [str(tmp_path / "cloned" / "weights")]


@pytest.mark.parametrize("model", ["hf:smollm2", "hf:HuggingFaceTB/SmolLM2-135M-Instruct@main", "ollama:qwen2:0.5b",
                                   "gpt-4o-mini", "openai:local"])
def test_a_model_by_name_is_the_files_to_choose(tmp_path, user_env, model):
    task = load_task(planted(tmp_path, f"model = {json.dumps(model)}"))
    assert model_path(task) is None and not model_refusals(task)


def test_flags_that_replace_the_files_model_grant_it(tmp_path, user_env, loads, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    task = load_task(planted(tmp_path, f"model = {json.dumps(outside_models(tmp_path)['..'])}"))
    assert model_refusals(task)
    assert not model_refusals(task, model="hf:smollm2") and not model_refusals(task, base_url="http://mine/v1")
    make_backends([task], tmp_path / "out", model="hf:smollm2")
    assert loads == ["hf:smollm2"]
    make_backends([task], tmp_path / "out", trust_task_files=True)
    assert loads[-1] == str(tmp_path / "private" / "model")


def test_every_refusal_is_said_at_once(tmp_path, user_env, loads, capsys):
    path = planted(tmp_path, 'base_url = "http://127.0.0.1:9/v1"\n[sandbox]\nnetwork = true')
    assert run(path, tmp_path) == 2
    err = capsys.readouterr().err
    assert "network = true" in err and "base_url" in err and loads == []
    assert os.environ["OPENAI_API_KEY"] == KEY  # untouched
