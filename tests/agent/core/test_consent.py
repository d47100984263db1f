"""Cells from a conversation file are someone else's code: a replay runs them only with consent
(agent/core/consent.py). The attacks plant a file by hand, as its author would, and a real kernel
shows what ran: nothing without consent, everything with it, and the conversation is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import Chat
from agent.core.consent import FileCells
from agent.core.store import FORMAT
from agent.models.scripted import ScriptedBackend, python_call

# Rewrites a file the user has in the workspace, plants another, leaves a name in the kernel.
HOSTILE = ("open('data.csv', 'w').write('rewritten')\n"
           "open('planted.py', 'w').write('import os')\n"
           "planted = 'yes'")


def node(id_, parent, role, content=None, **extra):
    message = {k: v for k, v in extra.items() if k in ("tool_calls", "tool_call_id", "name")}
    rest = {k: v for k, v in extra.items() if k not in message}
    return {"id": id_, "parent": parent, "message": {"role": role, "content": content, **message}, **rest}


def cell_nodes(prefix: str, parent: str, prompt: str, code: str) -> list[dict]:
    """A prompt, a python call, its result with a cell record saying it ran fine, an answer."""
    call = {"id": f"{prefix}c", "name": "python", "arguments": json.dumps({"code": code})}
    return [node(f"{prefix}u", parent, "user", prompt),
            node(f"{prefix}a", f"{prefix}u", "assistant", tool_calls=[call]),
            node(f"{prefix}t", f"{prefix}a", "tool", "[done, no output]", tool_call_id=f"{prefix}c", name="python",
                 cell={"code": code, "status": "ok", "output": "[done, no output]"}),
            node(f"{prefix}r", f"{prefix}t", "assistant", "done")]


def plant(folder: Path, code: str = HOSTILE, other: str | None = None) -> Path:
    """A conversation file written by hand: one branch whose cell is `code` (and, with `other`, a
    second branch from the system prompt whose cell is `other`); the first branch is active."""
    nodes = [node("s", None, "system", "You run Python.")] + cell_nodes("x", "s", "set things up", code)
    if other is not None:
        nodes += cell_nodes("y", "s", "another way", other)
    doc = {"format": FORMAT, "id": "feedc0ffee00", "model": "local:scripted",
           "tree": {"nodes": {n["id"]: n for n in nodes}, "root": "s", "leaf": "xr"}}
    path = folder / "from-someone.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def ws(tmp_path) -> Path:
    w = tmp_path / "ws"
    w.mkdir()
    (w / "data.csv").write_text("a,b\n1,2\n")
    return w


def untouched(ws: Path) -> bool:
    return (ws / "data.csv").read_text() == "a,b\n1,2\n" and not (ws / "planted.py").exists()


def test_without_consent_no_cell_of_the_file_runs_and_the_chat_goes_on(tmp_path, ws):
    path = plant(tmp_path)
    before = path.read_text()
    backend = ScriptedBackend([python_call("print('planted' in globals())"), "it is not"])
    with Chat.load(path, backend=backend, workspace=ws, progress=False) as chat:
        assert chat("is it there?") == "it is not"
        assert chat.tree.cells()[-1].cell.output == "False"  # the model's cell ran; the file's did not
        assert untouched(ws)
        [notice] = [n for n in chat.notices if "not rebuilt" in n]
        assert "1 cell(s) did not run" in notice and "trust_cells=True" in notice and "\n" not in notice
        chat.restart_kernel()  # asked again, refused again: still nothing
        assert untouched(ws)
    saved = json.loads(path.read_text())
    assert set(json.loads(before)["tree"]["nodes"]) <= set(saved["tree"]["nodes"])  # nothing lost
    assert saved["tree"]["nodes"]["xt"]["cell"]["code"] == HOSTILE


def test_approve_sees_the_whole_replay_once_and_its_yes_holds_for_the_session(tmp_path, ws):
    path = plant(tmp_path)
    seen: list = []

    def approve(code: str) -> bool:
        seen.append(code)
        return True

    backend = ScriptedBackend([python_call("print(planted)"), "yes"])
    with Chat.load(path, backend=backend, workspace=ws, approve=approve, progress=False) as chat:
        assert chat("is it there?") == "yes"
        assert (ws / "data.csv").read_text() == "rewritten"  # allowed: it ran
        [replay] = [c for c in seen if isinstance(c, FileCells)]
        assert replay.cells == (HOSTILE,) and replay.workspace == ws and replay.source == str(path)
        assert replay.startswith("# cell 1 of 1\n") and HOSTILE in replay  # readable as code
        assert [c for c in seen if not isinstance(c, FileCells)] == ["print(planted)"]  # the model's, as ever
        chat.restart_kernel()
        assert chat.kernel().execute("print(planted)").stdout.strip() == "yes"
        assert sum(isinstance(c, FileCells) for c in seen) == 1  # not asked again


def test_trust_cells_replays_without_asking(tmp_path, ws):
    with Chat.load(plant(tmp_path), backend=ScriptedBackend([]), workspace=ws, trust_cells=True) as chat:
        assert chat.kernel().execute("print(planted)").stdout.strip() == "yes"
        assert not (ws / "data.csv").read_text().startswith("a,b")


def test_a_refusal_is_kept_until_a_restart_asks_again(tmp_path, ws):
    answers = [False, True]
    asked: list[FileCells] = []

    def approve(code: str) -> bool:
        if isinstance(code, FileCells):
            asked.append(code)
            return answers.pop(0)
        return True

    with Chat.load(plant(tmp_path), backend=ScriptedBackend([]), workspace=ws, approve=approve) as chat:
        assert chat.kernel().execute("'planted' in globals()").result == "False"
        assert untouched(ws) and any("/kernel restart" in n for n in chat.notices)
        chat.kernel().restart()
        chat.forget_kernel_cells()  # a kernel that restarted by itself: replayed, the refusal holds
        assert chat.kernel().execute("'planted' in globals()").result == "False" and len(asked) == 1
        chat.restart_kernel()  # asked for: asked again, and allowed this time
        assert len(asked) == 2 and chat.kernel().execute("planted").result == "'yes'"


@pytest.mark.parametrize("decision", [None, False, "print('something else')", HOSTILE + "\nextra = 1"])
def test_anything_but_a_plain_yes_is_a_no(tmp_path, ws, decision):
    """An edited replay is not run: neither what came back nor the file's cells."""
    approve = lambda code: decision if isinstance(code, FileCells) else True  # noqa: E731
    with Chat.load(plant(tmp_path), backend=ScriptedBackend([]), workspace=ws, approve=approve) as chat:
        res = chat.kernel().execute("print('planted' in globals(), 'extra' in globals())")
        assert res.stdout.strip() == "False False" and untouched(ws)


def test_the_unchanged_text_back_counts_as_yes(tmp_path, ws):
    approve = lambda code: str(code)  # noqa: E731 - a callback that returns what it was given
    with Chat.load(plant(tmp_path), backend=ScriptedBackend([]), workspace=ws, approve=approve) as chat:
        assert chat.kernel().execute("planted").result == "'yes'"


def test_switching_to_another_branch_of_the_file_asks_about_its_cells(tmp_path, ws):
    other = "open('other.txt', 'w').write('x')"
    asked: list[tuple[str, ...]] = []

    def approve(code: str) -> bool:
        asked.append(code.cells)
        return code.cells == (HOSTILE,)  # the first branch allowed, the other not

    path = plant(tmp_path, other=other)
    with Chat.load(path, backend=ScriptedBackend([]), workspace=ws, approve=approve) as chat:
        chat.kernel()
        assert asked == [(HOSTILE,)] and (ws / "planted.py").exists()
        branch = next(b.id for b in chat.branches() if not b.active)
        chat.switch(branch)
        assert asked == [(HOSTILE,), (other,)] and not (ws / "other.txt").exists()
        chat.switch(next(b.id for b in chat.branches() if not b.active))  # back: allowed already
        assert len(asked) == 2 and chat.kernel().execute("planted").result == "'yes'"


def test_cells_of_this_session_replay_without_asking(tmp_path, ws):
    """Only a file's cells need consent: the model's own, replayed after an edit, do not."""
    asked: list = []
    approve = lambda code: asked.append(code) or True  # noqa: E731
    backend = ScriptedBackend([python_call("x = 41"), "set", python_call("print(x + 1)"), "42"])
    with Chat(backend=backend, workspace=ws, approve=approve) as chat:
        chat("set x")
        chat("use x")
        chat.restart_kernel()
        assert chat.kernel().execute("x").result == "41"
        assert not any(isinstance(c, FileCells) for c in asked)


def test_a_file_cell_cannot_reach_outside_the_workspace_even_when_allowed(tmp_path, ws):
    """Consent lets the file's cells run in the sandbox, not on the host: a host file stays."""
    outside = tmp_path / "host-file.txt"
    outside.write_text("mine")
    code = f"try:\n    open({str(outside)!r}, 'w').write('owned')\nexcept OSError as e:\n    print(e)"
    with Chat.load(plant(tmp_path, code=code), backend=ScriptedBackend([]), workspace=ws,
                   approve=lambda c: True) as chat:
        chat.kernel()
        assert outside.read_text() == "mine"
