"""A Jupyter notebook as a conversation's starting point: `Chat(notebook=PATH)`, `kernelchat
--notebook PATH`, `/notebook PATH`.

The notebook's code cells become one exchange on the active branch: a user message ("Loaded
notebook NAME: its N code cells were run"), an assistant message that calls the python tool once
per cell, each cell's result, and a closing assistant line. Each cell runs through the ordinary
tool path, so its outputs, figures and errors are recorded as cells of the branch: the model sees
them in its next request, and the kernel replays them when the branch is switched to or loaded.

Every cell runs, also after one that failed (as `jupyter nbconvert --execute --allow-errors`
does): a starting point is most useful with all the state that could be built, and the model sees
each error where it happened. Magics (`%time`) and shell commands (`!ls`) run as IPython runs them,
the latter in the sandbox (a failing one leaves what it printed). Empty, Markdown and raw cells are
not sent, and nothing but the .ipynb is read (no data files are copied).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Callable, Iterator

from agent.core.events import Event, NoticeEvent, ToolResultEvent
from agent.core.loop import LoopSession, run_call
from agent.core.messages import Message, ToolCall


def notebook_cells(path: str | Path) -> list[str]:
    """The sources of the code cells of the notebook at `path` (empty ones left out), checked
    against the nbformat schema; a file that is not a readable, valid notebook: ValueError, one
    sentence naming it."""
    import nbformat  # here: only a notebook start needs it

    p = Path(path).expanduser()
    where = f"notebook {str(p)!r}"
    if not p.is_file():
        raise ValueError(f"{where} is not a file; give the path of an .ipynb notebook")
    try:
        nb = nbformat.read(str(p), as_version=4)
        nbformat.validate(nb)
    except OSError as e:
        raise ValueError(f"{where} cannot be read ({e.strerror or e}); check the path and its permissions") from None
    except nbformat.ValidationError as e:
        raise ValueError(f"{where} is not a valid notebook ({e.message.splitlines()[0][:200]}); "
                         "open and save it in Jupyter to repair it") from None
    except Exception as e:  # noqa: BLE001 - not JSON, not a notebook at all: nbformat's several reader errors
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{where} is not a Jupyter notebook ({first}); give an .ipynb file") from None
    return [c.source for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def notebook_events(session: LoopSession, path: str | Path) -> Iterator[Event]:
    """Add the notebook's code cells to the active branch, running each in the kernel; yields the
    events of each cell as a turn does (ToolCallEvent, ToolOutputEvent, ToolResultEvent), between
    a notice of what runs and one of how it went."""
    if "python" not in session.all_tools():
        raise ValueError("a notebook's cells run in the python tool, which is off (use_python=False)")
    cells = notebook_cells(path)
    name = Path(path).name
    n = len(cells)
    yield NoticeEvent(text=f"notebook {name}: running its {n} code cell{'s' * (n != 1)}")  # before it is added
    session.append(Message(role="user", content=f"Loaded notebook {name}: its {n} code cell{'s' * (n != 1)} "
                                                 "were run" if n else f"Loaded notebook {name}: it has no code cells"))
    calls = [ToolCall(id=f"nb_{uuid.uuid4().hex[:10]}", name="python", arguments=json.dumps({"code": code}))
             for code in cells]
    if calls:
        session.append(Message(role="assistant", tool_calls=calls))
    failed = 0
    try:
        for call in calls:
            result = yield from run_call(session, call)
            failed += isinstance(result, ToolResultEvent) and result.status != "ok"
    except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C: the cells not run get a result saying so
        session.end_turn("interrupted", f"interrupted while the cells of the notebook {name} ran")
        raise
    errors = f", {failed} with an error" if failed else ""
    done = f"The notebook {name} is loaded: {n} cell{'s' * (n != 1)} ran{errors}."
    session.append(Message(role="assistant", content=done))
    session.end_turn("answered")
    yield NoticeEvent(text=done)


def run_notebook(session: LoopSession, path: str | Path, on_event: Callable[[Event], None] | None = None) -> None:
    """`notebook_events`, run to the end (Chat(notebook=...))."""
    for ev in notebook_events(session, path):
        if on_event is not None:
            on_event(ev)
