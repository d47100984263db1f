"""The terminal's question before cells from a file run (a loaded conversation's replay, a
notebook's cells): each cell shown as text, numbered, with where it will run; one key answers."""

from __future__ import annotations

from prompt_toolkit import prompt as pt_prompt
from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.text import Text

from agent.core.consent import FileCells
from agent.frontends.render import code_panel, safe_line


def show_file_cells(console: Console, cells: FileCells, temporary: bool) -> None:
    """What would run: a line saying how many cells, from which file and where, then each cell."""
    n = len(cells.cells)
    where = (f"in the workspace {cells.workspace}" + (" (temporary)" if temporary else "")
             if cells.workspace else "in a new temporary workspace")
    console.print(Text(f"{n} cell{'s' * (n > 1)} from {safe_line(cells.source)} would run in the kernel, "
                       f"{safe_line(where)}: code from that file, not from the model; none of it has run yet",
                       style="bold yellow"), soft_wrap=True)
    for i, code in enumerate(cells.cells, 1):
        console.print(code_panel(code, title=f"cell {i} of {n} from the file", border_style="yellow"))


def ask_file_cells(console: Console, cells: FileCells, temporary: bool) -> bool:
    """Show the cells and ask once: y runs them all; n, Enter, Ctrl-C or Ctrl-D leave them out."""
    show_file_cells(console, cells, temporary)
    n = len(cells.cells)
    kb = KeyBindings()
    for key, result in (("y", True), ("n", False), ("enter", False), ("c-c", False), ("c-d", False)):
        kb.add(key)(lambda event, r=result: event.app.exit(result=r))
    kb.add("<any>")(lambda event: None)  # other keys do nothing
    try:
        yes = pt_prompt(HTML(f"run {'these' if n > 1 else 'this'} {n} cell{'s' * (n > 1)} from the file? "
                             "<b>y</b>es · <b>[N]</b>o, leave them out "), key_bindings=kb)
    except (KeyboardInterrupt, EOFError):
        yes = False
    if not yes:
        console.print(Text(f"not run: the {n} cell{'s' * (n > 1)} from the file {'were' if n > 1 else 'was'} left out",
                           style="yellow"))
    return bool(yes)
