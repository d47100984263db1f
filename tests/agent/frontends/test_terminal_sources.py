"""Text that came from elsewhere reaches the terminal as text: a server's model ids and error
bodies (`kernelchat models`), saved conversations (`kernelchat conversations`, `--resume`), the
sandbox's warnings that quote names from a task's folder. Each is planted for real (a local HTTP
server, conversation files, a folder of hostile names), the real CLI runs as a subprocess, and the
bytes it writes hold no control sequence but rich's own colours, and no markup of theirs is obeyed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.chat import Chat
from agent.core import store
from agent.models.scripted import ScriptedBackend

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
# The escapes a hostile server or file would send, and rich markup that must stay text.
ESCAPES = {"osc52": "\x1b]52;c;cm0gLXJmIH4=\x07", "clear": "\x1b[2J\x1b[H", "title": "\x1b]0;PWNED-TITLE\x07",
           "osc8": "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\", "c1-csi": "\x9b2J", "ris": "\x1bc",
           "bidi": "\u202e"}
MARKUP = "[/INST] [link=https://evil.example/]hidden[/link] [bold red]loud[/bold red] [/]"
HOSTILE = "".join(ESCAPES.values()) + MARKUP


def cli(*args: str, env: dict[str, str], color: bool = True) -> subprocess.CompletedProcess:
    """The real `kernelchat`, its stdout and stderr piped; with `color` rich believes they are a terminal."""
    env = {**os.environ, **env, "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    if color:
        env["FORCE_COLOR"] = "1"
    else:
        env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=50)


def assert_safe(text: str, color: bool = True) -> None:
    """Nothing but rich's own SGR colours (none at all without colour), no C1 or bidi control, no
    hyperlink from markup, and no traceback."""
    assert "Traceback" not in text, text
    bare = re.sub(r"\x1b\[[0-9;]*m", "", text) if color else text
    bad = sorted({c for c in bare if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0
                  or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069})
    assert not bad, f"control characters reached the terminal: {bad!r}\n{text!r}"


# -- a hostile OpenAI-compatible server ------------------------------------------------------------

HUGE = "x" * 5_000_000
REPLIES = {  # path prefix: (status, content type, body)
    "ids": (200, "application/json", json.dumps({"object": "list", "data": [
        {"id": "model-" + HOSTILE, "object": "model"}, {"id": "[link=https://evil.example/]ok[/link]"}]})),
    "json-error": (500, "application/json", json.dumps({"error": {"message": "failed " + HOSTILE}})),
    "text-error": (502, "text/plain", "bad gateway " + HOSTILE),
    "huge-error": (400, "application/json", json.dumps({"error": {"message": HOSTILE + HUGE}})),
    "not-json": (200, "text/html", "<html>" + HOSTILE + "</html>"),
    "wrong-shape": (200, "application/json", json.dumps({"data": [{"id": 5}, 7, "x", {"no": "id"}]})),
    "a-list": (200, "application/json", json.dumps([HOSTILE])),
}


class Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, kind, body = REPLIES[self.path.strip("/").split("/")[0]]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def dirs(tmp_path) -> dict[str, str]:
    return {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "OPENAI_API_KEY": "k"}


@pytest.mark.parametrize("reply", REPLIES)
def test_models_shows_a_servers_ids_and_errors_as_text(server, dirs, reply):
    r = cli("models", "--base-url", f"{server}/{reply}/v1", env=dirs)
    assert r.returncode == 0, r.stderr
    assert_safe(r.stdout + r.stderr)
    [line] = [line for line in r.stdout.splitlines() if line.startswith("server ")]
    if reply in ("ids", "json-error"):
        assert "[link=https://evil.example/]" in line  # the markup, as written
    if reply == "ids":
        assert "␛]52;c;" in line and "␛]0;PWNED-TITLE␇" in line and "[/INST]" in line and "[bold red]" in line
    elif reply == "huge-error":
        assert len(line) < 400, len(line)  # one line, cut: a server's megabytes are not shown
    elif reply in ("not-json", "wrong-shape", "a-list"):
        assert "is not a model list" in line
    if reply == "ids":
        plain = cli("models", "--base-url", f"{server}/{reply}/v1", env=dirs, color=False)
        assert_safe(plain.stdout + plain.stderr, color=False)  # piped, no colour: no escape at all


def test_models_json_is_ascii_with_the_servers_ids_kept(server, dirs):
    r = cli("models", "--json", "--base-url", f"{server}/ids/v1", env=dirs)
    assert r.returncode == 0 and r.stdout.isascii(), r.stderr
    assert "model-" + HOSTILE in json.loads(r.stdout)["server"]["models"]


# -- saved conversations ---------------------------------------------------------------------------

def saved(prompt: str, answer: str, model: str, **edits: str) -> Path:
    """A conversation saved by the real Chat, then edited as someone else's file could be: its id
    and its creation time."""
    chat = Chat(backend=ScriptedBackend([answer], model=model), isolation="none")
    chat(prompt)
    path = chat.save()
    chat.close()
    doc = json.loads(path.read_text())
    doc["id"] = edits.get("id", doc["id"])
    root = doc["tree"]["nodes"][doc["tree"]["root"]]
    root["created"] = edits.get("created", root["created"])
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def conversations(dirs, monkeypatch):
    """Hostile conversation files in the conversations folder: prompts and answers of markup and
    escapes, model names of both, ids and a creation time written by hand, and a broken file."""
    for k, v in dirs.items():
        monkeypatch.setenv(k, v)
    saved(f"{MARKUP} {HOSTILE}\nsecond line", f"answer {HOSTILE}", f"m{HOSTILE}", id="c0ffee1" + HOSTILE)
    saved("[/INST]", "[bold]x", "[/INST]", id="c0ffee2" + HOSTILE, created="[/bold]" + HOSTILE)
    (store.conversations_dir() / f"c0ffee-{HOSTILE[:9]}.json").write_text("{" + HOSTILE)


def test_conversations_lists_markup_and_escapes_as_text(conversations, dirs):
    for color in (True, False):
        r = cli("conversations", env=dirs, color=color)
        assert r.returncode == 0, r.stderr
        assert_safe(r.stdout + r.stderr, color)
        shown = r.stdout
        assert "[/INST]" in shown and "[link=https:" in shown and "␛]52;" in shown and "c0ffee1␛" in shown
        assert "[/bold" in shown and "unreadable" in shown  # the hand-written time, the broken file
        assert "\x1b]8;" not in shown  # [link=...] made no hyperlink


def test_resume_names_matching_hostile_ids_in_one_safe_line(conversations, dirs):
    r = cli("--resume", "c0ffee", env=dirs)
    assert r.returncode == 2 and "2 conversations match" in r.stderr, r.stderr
    assert_safe(r.stdout + r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1


# -- the sandbox's warnings, quoting names from a task's folder --------------------------------------

def test_warnings_quoting_hostile_names_are_shown_safe(tmp_path, dirs):
    data = tmp_path / "task" / "data"
    data.mkdir(parents=True)
    (data / "ok.csv").write_text("a\n1\n")
    (data / f"link{ESCAPES['title']}{ESCAPES['osc52']}").symlink_to("/etc/passwd")
    os.mkfifo(data / f"fifo{ESCAPES['clear']}[red]")  # no "/": a name
    task = tmp_path / "task" / "t.toml"
    task.write_text('prompts = ["go"]\nfiles = ["data"]\n')
    # a server that is not there: the files are copied in, then the task fails; no model loads
    r = cli("run", str(task), "--out", str(tmp_path / "out"), "--model", "openai:gpt-4o",
            "--base-url", "http://127.0.0.1:9/v1", "--no-progress", env=dirs)
    assert "skipped what is not a regular file" in r.stderr, r.stderr
    assert "link␛]0;PWNED-TITLE␇" in r.stderr and "fifo␛[2J␛[H[red]" in r.stderr
    assert_safe(r.stdout + r.stderr)
