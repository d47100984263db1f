"""The resident model server (agent/models/resident.py, resident_server.py).

Fast tests drive the real protocol over a real Unix socket with a server thread serving a scripted
backend; the slow ones start the real server process with the embedded model, as the command line
does, and compare it with the in-process TransformersBackend."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from agent.core.backend import BackendError, Capabilities
from agent.core.messages import Done, Message, Reply, TextDelta, Usage
from agent.models import get_backend
from agent.models.resident import (Address, ResidentBackend, ResidentUnavailable, ask, code_fingerprint,
                                   runtime_folder, server_env, servers, stop_servers)
from agent.models.resident_server import Server
from agent.models.scripted import ScriptedBackend

QUESTION = [Message(role="system", content="You are a helpful assistant."),
            Message(role="user", content="What is the capital of France? Answer in one word.")]


IN_THREAD: list[Server] = []  # the servers serve_in_thread started, stopped after each test


@pytest.fixture
def runtime(monkeypatch) -> Iterator[Path]:
    """A private runtime folder, short enough for a socket path."""
    folder = Path(tempfile.mkdtemp(prefix="kc-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    while IN_THREAD:
        IN_THREAD.pop().stopping.set()
    shutil.rmtree(folder, ignore_errors=True)


def serve_in_thread(backend: Any, model_dir: Path, keep_alive: float = 60.0) -> Server:
    """A Server on the address a ResidentBackend(model_dir) looks for, in a thread of this process."""
    addr = Address.of(str(model_dir), str(model_dir))
    server = Server(backend, str(model_dir), addr.endpoint, keep_alive)
    threading.Thread(target=server.serve, daemon=True).start()
    assert server.ready.wait(10)
    IN_THREAD.append(server)
    return server


def until(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class SlowBackend(ScriptedBackend):
    """Streams one word at a time until cancelled (what a long generation looks like)."""

    def __init__(self) -> None:
        super().__init__([])
        self.cancelled = threading.Event()
        self.guides: dict[str, Any] = {}

    def stream(self, messages, tools=None, *, max_tokens=None, temperature=None, cancel=None, **guides):
        self.guides = guides
        for i in range(max_tokens or 1000):
            if cancel is not None and cancel.is_set():
                self.cancelled.set()
                break
            yield TextDelta(text=f"w{i} ")
            time.sleep(0.01)
        yield Done(reply=Reply(message=Message(role="assistant", content="..."), usage=Usage()))


# -- fast: the protocol, with a scripted backend ------------------------------------------------------


def test_a_command_uses_the_server_that_answers(runtime, tmp_path):
    backend = ScriptedBackend(["Paris", "Lyon"], capabilities=Capabilities(tools=False))
    server = serve_in_thread(backend, tmp_path)
    client = ResidentBackend(str(tmp_path), keep_alive=30)
    assert not client.started and client.pid == os.getpid()  # connected: nothing was started
    assert client.capabilities == Capabilities(tools=False) and client.context_window == 128_000
    events = list(client.stream(QUESTION))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Paris"
    assert isinstance(events[-1], Done) and events[-1].reply.message.content == "Paris"
    assert client.count_prompt_tokens(QUESTION) == backend.count_prompt_tokens(QUESTION)
    assert backend.requests[0] == QUESTION  # the messages crossed the socket unchanged
    assert until(lambda: server.info()["users"] == 1)  # the command's hold (the requests' threads end)
    client.close()


def test_an_error_of_the_model_reaches_the_command(runtime, tmp_path):
    serve_in_thread(ScriptedBackend([]), tmp_path)  # no reply left: the backend raises
    client = ResidentBackend(str(tmp_path), keep_alive=30)
    with pytest.raises(BackendError, match="no reply left"):
        client.complete(QUESTION)


def test_leaving_the_stream_stops_the_generation(runtime, tmp_path):
    backend = SlowBackend()
    serve_in_thread(backend, tmp_path)
    client = ResidentBackend(str(tmp_path), keep_alive=30)
    stream = client.stream(QUESTION, max_tokens=5000, numbers={"7"}, favour="print(", bonus=2.0, max_calls=3,
                           constrain_calls=True)
    assert isinstance(next(stream), TextDelta)
    stream.close()  # Ctrl-C, a budget: the connection closes
    assert backend.cancelled.wait(5), "the server kept generating for a command that left"
    assert backend.guides == {"numbers": {"7"}, "favour": "print(", "bonus": 2.0, "max_calls": 3,
                              "constrain_calls": True}  # they arrived


def test_the_server_waits_for_its_users_then_leaves(runtime, tmp_path):
    server = serve_in_thread(ScriptedBackend(["ok"]), tmp_path, keep_alive=0.5)
    client = ResidentBackend(str(tmp_path), keep_alive=0.5)
    time.sleep(1.5)
    assert client.complete(QUESTION).message.content == "ok"  # held: still here
    assert until(lambda: server.info()["users"] == 1)
    client.close()
    assert until(lambda: not server.sock_path.exists()), "the server did not leave after keep_alive"


def test_a_silent_peer_does_not_keep_the_server(runtime, tmp_path, monkeypatch):
    import agent.models.resident_server as rs

    monkeypatch.setattr(rs, "REQUEST_TIMEOUT", 0.3)
    server = serve_in_thread(ScriptedBackend([]), tmp_path, keep_alive=0.3)
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(server.sock_path))  # and says nothing
        assert until(lambda: not server.sock_path.exists(), 10), "a silent connection kept the server"


def test_another_user_gets_no_answer(runtime, tmp_path, monkeypatch):
    import agent.models.resident_server as rs

    server = serve_in_thread(ScriptedBackend(["secret"]), tmp_path)
    monkeypatch.setattr(rs, "peer_uid", lambda conn: os.getuid() + 1)  # as if another user connected
    with pytest.raises(ConnectionError):
        ask(server.sock_path, {"op": "info"})


def test_the_socket_and_folder_are_this_users_only(runtime, tmp_path):
    serve_in_thread(ScriptedBackend([]), tmp_path)
    addr = Address.of(str(tmp_path), str(tmp_path))
    assert os.stat(addr.socket).st_mode & 0o777 == 0o600
    assert os.stat(addr.socket.parent).st_mode & 0o777 == 0o700


def test_an_open_runtime_folder_is_refused(runtime):
    (runtime / "kernelchat").mkdir(mode=0o777)
    os.chmod(runtime / "kernelchat", 0o777)
    with pytest.raises(ResidentUnavailable, match="only this user"):
        runtime_folder()


def test_a_linked_runtime_folder_is_refused(runtime, tmp_path):
    (runtime / "kernelchat").symlink_to(tmp_path)  # another user's folder, say
    with pytest.raises(ResidentUnavailable, match="is a symbolic link"):
        runtime_folder()


def test_a_deep_runtime_folder_is_served_through_its_descriptor(monkeypatch, tmp_path):
    """sun_path holds 108 bytes; /proc/self/fd/N/KEY.sock is always short, however deep the folder."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    try:
        serve_in_thread(ScriptedBackend(["deep"]), tmp_path)
        assert len(os.fsencode(Address.of(str(tmp_path), str(tmp_path)).socket)) > 108
        assert ResidentBackend(str(tmp_path), keep_alive=30).complete(QUESTION).message.content == "deep"
    finally:
        while IN_THREAD:
            IN_THREAD.pop().stopping.set()


def test_the_address_follows_model_precision_and_code(runtime, tmp_path):
    a = Address.of("hf:smollm2", str(tmp_path), "auto")
    assert a.socket == Address.of("hf:smollm2", str(tmp_path), "auto").socket
    assert a.socket != Address.of("hf:smollm2", str(tmp_path), "fp32").socket
    (tmp_path / "model.safetensors").write_bytes(b"new weights")  # the model's files changed
    assert a.socket != Address.of("hf:smollm2", str(tmp_path), "auto").socket
    assert code_fingerprint() == code_fingerprint()


def test_the_server_gets_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("KERNELCHAT_GATEWAY_TOKEN", "t")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    env = server_env()
    assert not {"OPENAI_API_KEY", "KERNELCHAT_GATEWAY_TOKEN", "HF_TOKEN"} & set(env)
    assert env["PATH"] == os.environ["PATH"] and env["PYTHONPATH"].split(os.pathsep)[0]


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_keep_alive_must_be_a_positive_finite_number(seconds):
    with pytest.raises(ValueError, match="keep_alive"):
        ResidentBackend("hf:smollm2", keep_alive=seconds)


# -- slow: the real server process with the embedded model -------------------------------------------


@pytest.fixture(scope="module")
def real_runtime() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="kc-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(folder))
        try:
            yield folder
        finally:
            for info in servers():
                try:
                    os.kill(info["pid"], signal.SIGKILL)
                except OSError:
                    pass
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def resident(real_runtime) -> Iterator[ResidentBackend]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "sk-resident-test-secret")  # must not reach the server
        backend = ResidentBackend("hf:smollm2", keep_alive=300, progress=False)
    yield backend
    backend.close()


def wait_fp16(resident: ResidentBackend, local: Any) -> None:
    """Both in fp16 (packing runs on a thread after loading), so their greedy tokens are comparable."""
    assert local.fp16 is None or local.fp16.wait(120)
    deadline = time.monotonic() + 120
    while not ask(resident.address.socket, {"op": "info"})["fp16_ready"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.slow
def test_the_resident_model_answers_as_the_local_one(resident, local_backend):
    assert resident.started and resident.pid != os.getpid()
    assert resident.capabilities == local_backend.capabilities
    assert resident.context_window == local_backend.context_window
    assert resident.tools_note == local_backend.tools_note
    assert resident.count_prompt_tokens(QUESTION) == local_backend.count_prompt_tokens(QUESTION)
    wait_fp16(resident, local_backend)
    for _ in range(2):  # the second from the KV cache of the first, on both
        here, there = local_backend.complete(QUESTION, max_tokens=12), resident.complete(QUESTION, max_tokens=12)
        assert there.message.content == here.message.content and there.message.content
        assert there.usage.completion_tokens == here.usage.completion_tokens
    guided = dict(numbers={"3", "4"}, favour="print(3 + 4)", bonus=2.0)
    ask_sum = [QUESTION[0], Message(role="user", content="What is 3 + 4? Use Python.")]
    assert (resident.complete(ask_sum, max_tokens=24, **guided).message.content
            == local_backend.complete(ask_sum, max_tokens=24, **guided).message.content)


@pytest.mark.slow
def test_a_second_command_finds_the_model_loaded(resident):
    t = time.monotonic()
    second = ResidentBackend("hf:smollm2", keep_alive=300, progress=False)
    assert not second.started and second.pid == resident.pid
    assert time.monotonic() - t < 2.0  # no torch import, no weights: a connection
    assert until(lambda: [s["users"] for s in servers()] == [2])
    second.close()


@pytest.mark.slow
def test_the_server_holds_no_secret(resident):
    environ = Path(f"/proc/{resident.pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{resident.pid}/cmdline").read_bytes()
    assert b"sk-resident-test-secret" not in environ + cmdline and b"OPENAI_API_KEY" not in environ


@pytest.mark.slow
def test_a_stopped_server_is_started_again(resident):
    old = resident.pid
    assert [s["pid"] for s in stop_servers()] == [old]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{old}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = resident.complete(QUESTION, max_tokens=8)  # the next request starts it again
    assert reply.message.content and resident.pid != old


@pytest.mark.slow
def test_a_server_killed_mid_reply_is_one_error_then_started_again(resident):
    """SIGKILL leaves its socket file behind: the reply in flight fails with one sentence naming the
    log, and the next request starts a new server over the stale socket."""
    old = resident.pid
    story = [QUESTION[0], Message(role="user", content="Write a long story about a dragon.")]
    stream = resident.stream(story, max_tokens=400)
    assert isinstance(next(stream), TextDelta)
    os.kill(old, signal.SIGKILL)
    with pytest.raises(BackendError, match=r"stopped mid-reply.*log: "):
        list(stream)
    assert resident.address.socket.exists()  # stale
    assert resident.complete(QUESTION, max_tokens=8).message.content and resident.pid != old


@pytest.mark.slow
def test_a_model_that_does_not_load_is_reported(real_runtime, tmp_path, monkeypatch):
    (tmp_path / "-model").mkdir()
    (tmp_path / "-model" / "config.json").write_text("{}")  # a folder, but no model in it
    monkeypatch.chdir(tmp_path)  # a relative name, and one that looks like an option
    with pytest.raises(BackendError, match=r"failed to start \(exit 1\): .*Error") as e:
        get_backend("-model", keep_alive=5)
    assert "expected one argument" not in str(e.value) and "-model" in str(e.value)


def test_socket_module_is_unix():  # the resident server needs AF_UNIX and SO_PEERCRED (Linux)
    assert hasattr(socket, "AF_UNIX") and hasattr(socket, "SO_PEERCRED")


def test_sandboxed_code_cannot_reach_the_model_server(runtime, tmp_path, shared_kernel):
    """Model-written code must not drive (or stop) the model server: its socket is not in the
    sandbox's view of the filesystem, and a peer of another uid would get no answer anyway."""
    server = serve_in_thread(ScriptedBackend(["unused"]), tmp_path)
    code = ("import socket, json\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({str(server.sock_path)!r}); s.sendall(b'{{\"op\": \"stop\"}}\\n'); print('reply', s.recv(100))\n"
            "except OSError as e:\n"
            "    print('refused', type(e).__name__)\n")
    result = shared_kernel.execute(code)
    assert "refused" in result.stdout or result.stdout.strip() == "reply b''", result.stdout + result.stderr
    assert not server.stopping.is_set() and ask(server.sock_path, {"op": "info"})["pid"] == os.getpid()


def test_a_hub_id_is_addressed_by_the_snapshot_its_cache_points_at(runtime, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    refs = tmp_path / "hub" / "models--org--tiny" / "refs"
    first = Address.of("hf:org/tiny", "org/tiny")  # not cached yet
    refs.mkdir(parents=True)
    (refs / "main").write_text("abc123")
    second = Address.of("hf:org/tiny", "org/tiny")
    (refs / "main").write_text("def456")  # a newer download
    third = Address.of("hf:org/tiny", "org/tiny")
    assert len({first.socket, second.socket, third.socket}) == 3
    assert Address.of("hf:org/tiny", "org/tiny").socket == third.socket
