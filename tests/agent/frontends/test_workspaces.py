"""Temporary workspaces at exit, as the front ends show it: the one-shot CLI and the terminal chat
(in a pty) say "files kept in PATH" when the code left a file there, and leave nothing otherwise."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from agent.frontends import cli
from agent.models.scripted import ScriptedBackend, python_call

REPO = Path(__file__).resolve().parents[3]
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]")


def workspaces(d: Path) -> list[Path]:
    return sorted(d.glob("kernelchat-ws-*"))


def one_shot(monkeypatch, capsys, replies: list) -> str:
    monkeypatch.setattr("agent.chat.get_backend", lambda *a, **k: ScriptedBackend(list(replies)))
    assert cli.main(["run the code", "--no-save"]) == 0
    return " ".join(capsys.readouterr().err.split())


def test_one_shot_keeps_a_workspace_with_a_file_and_says_where(tmpdir_, monkeypatch, capsys):
    err = one_shot(monkeypatch, capsys, [python_call("open('result.txt', 'w').write('42')"), "done"])
    [ws] = workspaces(tmpdir_)
    assert f"files kept in {ws}" in err and (ws / "result.txt").read_text() == "42"


def test_one_shot_removes_a_workspace_without_files(tmpdir_, monkeypatch, capsys):
    err = one_shot(monkeypatch, capsys, [python_call("import os; os.makedirs('empty/folder'); x = 1"), "done"])
    assert workspaces(tmpdir_) == [] and "files kept" not in err


def chat(tmp_path: Path, tmpdir_: Path, script: list) -> str:
    """The terminal chat in a pty with a temporary workspace: one prompt, then Ctrl-D; the screen."""
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"), TERM="xterm-256color", COLUMNS="120",
               LINES="40", TMPDIR=str(tmpdir_), KERNELCHAT_SCRIPT=str(tmp_path / "script.json"))
    child = pexpect.spawn(sys.executable, ["-c", "import tests.agent.frontends.repl_harness as h; h.main()"],
                          env=env, cwd=str(REPO), dimensions=(40, 120), encoding="utf-8")
    screen, sent = "", False
    deadline = time.monotonic() + 180  # two shared cores, often busy
    try:
        while time.monotonic() < deadline:
            try:
                chunk = child.read_nonblocking(1 << 20, timeout=0.1)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                break
            for _ in range(chunk.count("\x1b[6n")):  # prompt_toolkit asks where the cursor is
                child.send("\x1b[20;1R")
            screen += ANSI.sub("", chunk)
            if not sent and "You [1]: " in screen and "Ctrl-D quit" in screen:  # the prompt and its toolbar drawn
                child.send("go\r")
                sent = True
            elif sent and "done" in screen.split("go", 1)[-1] and "You [2]: " in screen:
                child.send("\x04")
        else:
            raise AssertionError(f"the chat did not finish:\n{screen[-3000:]}")
    finally:
        if child.isalive():
            child.terminate(force=True)
    return " ".join(screen.split())


def test_terminal_chat_says_where_the_files_are_kept(tmp_path, tmpdir_):
    screen = chat(tmp_path, tmpdir_, [{"python": "open('plot.csv', 'w').write('1,2')"}, "done"])
    [ws] = workspaces(tmpdir_)
    assert f"files kept in {ws}" in screen and (ws / "plot.csv").is_file()


def test_terminal_chat_leaves_no_empty_workspace(tmp_path, tmpdir_):
    screen = chat(tmp_path, tmpdir_, [{"python": "x = 1"}, "done"])
    assert workspaces(tmpdir_) == [] and "files kept" not in screen
