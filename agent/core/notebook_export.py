"""A conversation as a Jupyter notebook (nbformat 4): prompts and answers as Markdown cells (the
answer, the labels a turn strategy put on messages and how a turn ended marked as the HTML export
marks them), each python cell as a code cell with its outputs and the HTML's `In [n]` count, images
embedded from the tree's bytes.

A cell's outputs are made from the kernel's fields its `CellRecord` keeps (stdout, stderr, the
result, Markdown displays, the figures, the error, the notes). Files written before those fields
were kept have only the text the model saw: their outputs are taken apart from that text, which
`tools.python_tool.render` lays out as: stdout, `[stderr]` and stderr, `Out: ` and the last value,
`[image saved: PATH]` lines, the traceback, then `[...]` notes."""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from pathlib import PurePath
from typing import Any

from agent.core.export import (answers, cell_numbers, ending, fence, inert_line, inert_markdown, shown_path,
                               tag_line)
from agent.core.store import ConversationFile
from agent.core.tree import CellRecord, Figure

NBFORMAT, NBFORMAT_MINOR = 4, 5
REJECTED_NOTE = "*Not run: the user (the approval hook) did not allow this cell.*"
_IMAGE_LINE = re.compile(r"^\[image saved: (.*)\]$")
_NOTE_LINE = re.compile(r"^\[.*\]$")
_CUT_NOTE = re.compile(r"^\[std(out|err) was long and was cut; the full text is in .*\]$")
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")
_NO_OUTPUT = "[done, no output]"


def _lines(text: str) -> list[str]:
    """Text as nbformat stores multi-line strings: lines that keep their newline."""
    return text.splitlines(keepends=True)


def _markdown(source: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": "", "metadata": {}, "source": _lines(source)}


def _stream(name: str, text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": _lines(text if text.endswith("\n") else text + "\n")}


def _figure(f: Figure) -> dict[str, Any] | None:
    """A display_data output of the image; None for bytes that are not what their type says.

    An SVG is markup that the kernel wrote: as `image/svg+xml` some viewers put it into the page
    (older nbconvert does), where its scripts run and its links load. It goes in as an `<img>` of its
    bytes instead, which every viewer shows and no browser lets run or fetch anything."""
    data: dict[str, Any]
    if f.mime == "image/svg+xml":
        try:
            base64.b64decode(f.data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        alt = html.escape(f.name or "figure")  # the data is base64 (Figure's pattern): nothing to escape
        data = {"text/html": [f'<img alt="{alt}" src="data:image/svg+xml;base64,{f.data}">']}
    else:
        data = {f.mime: f.data}  # PNG, JPEG, GIF: base64, as the tree stores them
    data["text/plain"] = [f"<{f.name or 'figure'}>"]
    return {"output_type": "display_data", "data": data, "metadata": {}}


def _split_error(lines: list[str]) -> tuple[list[str], list[str]]:
    """(what came before the traceback, the traceback) of an error cell's text."""
    for i, line in enumerate(lines):
        if ("Traceback (most recent call last)" in line or line.startswith("[... earlier traceback")
                or line.startswith("Cell In[")):
            return lines[:i], lines[i:]
    for i in range(len(lines) - 1, -1, -1):  # no header: the last "Name: value" line
        if _ERROR_LINE.match(lines[i]) and not _NOTE_LINE.match(lines[i]):
            return lines[:i], lines[i:]
    return lines, []


def cell_outputs(cell: CellRecord) -> list[dict[str, Any]]:
    """The nbformat outputs of a cell that ran, in the order a notebook shows them."""
    if not cell.has_fields:
        return _outputs_from_text(cell)
    outputs: list[dict[str, Any]] = []
    if cell.stdout:
        outputs.append(_stream("stdout", cell.stdout))
    if cell.stderr:
        outputs.append(_stream("stderr", cell.stderr))
    if cell.result is not None:
        outputs.append(_result(cell.result))
    # Markdown the kernel wrote, as text: a viewer would render its HTML and fetch its images
    outputs += [{"output_type": "display_data", "data": {"text/plain": _lines(text)}, "metadata": {}}
                for text in cell.markdown]
    outputs += [o for o in map(_figure, cell.figures) if o is not None]
    if (e := cell.error) is not None:
        outputs.append({"output_type": "error", "ename": e.name, "evalue": e.value, "traceback": e.traceback})
    stored = {f.name for f in cell.figures}
    notes = [f"[image saved: {p}]" for p in cell.images if PurePath(p).name not in stored] + cell.notes
    if notes:
        outputs.append(_stream("stderr", "\n".join(notes)))
    return outputs


def _result(text: str) -> dict[str, Any]:
    return {"output_type": "execute_result", "execution_count": None, "data": {"text/plain": _lines(text)},
            "metadata": {}}


def _outputs_from_text(cell: CellRecord) -> list[dict[str, Any]]:
    """Fallback for files written before the kernel's fields were kept: the outputs taken apart
    from the text the model saw."""
    lines = [] if cell.output.strip() == _NO_OUTPUT else cell.output.split("\n")
    stored = {f.name for f in cell.figures}
    notes: list[str] = []
    # At the end: the notes of cut output, then (a cell that was not plainly ok) the kernel's message.
    # Only those: a printed "[1, 2]" is output, not a note.
    if cell.status != "ok" and lines and _NOTE_LINE.match(lines[-1]) and not _CUT_NOTE.match(lines[-1]):
        notes.insert(0, lines.pop())
    while lines and _CUT_NOTE.match(lines[-1]):
        notes.insert(0, lines.pop())
    tb: list[str] = []
    # An error, or a cell stopped by Ctrl-C, whose text ends in KeyboardInterrupt's traceback
    failed = cell.status == "error" or (cell.status == "interrupted" and "KeyboardInterrupt" in cell.output)
    if failed:
        lines, tb = _split_error(lines)
    kept, unstored = [], []
    for line in lines:
        m = _IMAGE_LINE.match(line)
        if m:  # embedded below from its bytes; an older file's image without bytes stays a note
            unstored += [] if PurePath(m.group(1)).name in stored else [line]
        else:
            kept.append(line)
    notes[:0] = unstored
    result = None
    out_at = max((i for i, line in enumerate(kept) if line.startswith("Out: ")), default=None)
    if out_at is not None:
        result = "\n".join([kept[out_at].removeprefix("Out: "), *kept[out_at + 1:]])
        kept = kept[:out_at]
    stdout, stderr = kept, []
    if "[stderr]" in kept:
        at = kept.index("[stderr]")
        stdout, stderr = kept[:at], kept[at + 1:]
    outputs: list[dict[str, Any]] = []
    if stdout:
        outputs.append(_stream("stdout", "\n".join(stdout)))
    if stderr:
        outputs.append(_stream("stderr", "\n".join(stderr)))
    if result is not None:
        outputs.append(_result(result))
    outputs += [o for o in map(_figure, cell.figures) if o is not None]
    if failed:
        last = tb[-1] if tb else ""
        m = _ERROR_LINE.match(last)
        ename, evalue = (m.group(1), m.group(2) or "") if m else ("Error", last)
        outputs.append({"output_type": "error", "ename": ename, "evalue": evalue, "traceback": tb or [last]})
    if notes:
        outputs.append(_stream("stderr", "\n".join(notes)))
    return outputs


def to_notebook(conv: ConversationFile) -> dict[str, Any]:
    """The active branch as an nbformat 4 notebook (a dict: `json.dumps` it, or `nbformat.from_dict`)."""
    cells: list[dict[str, Any]] = [_markdown(f"# kernelchat conversation {inert_line(conv.id)}\n\n"
                                             f"Model: {inert_line(conv.model)}")]
    nodes = shown_path(conv)
    numbers, answer_ids = cell_numbers(nodes), answers(nodes)  # as the HTML and Markdown exports show them
    for node in nodes:
        m, cell = node.message, node.cell
        tag = f"{tag_line(node.label)}\n\n" if node.label is not None else ""
        if tag and not (m.role == "assistant" and m.content):
            cells.append(_markdown(tag.strip()))
        if m.role == "user":
            cells.append(_markdown(f"**User**\n\n{inert_markdown(m.content or '')}"))
        elif m.role == "assistant" and m.content:
            label = "Answer" if node.id in answer_ids else "Assistant"
            cells.append(_markdown(f"{tag}**{label}**\n\n{inert_markdown(m.content)}"))
        elif m.role == "tool" and cell is not None:
            code = {"cell_type": "code", "id": "", "metadata": {"kernelchat": {"status": cell.status}},
                    "source": _lines(cell.code), "execution_count": None, "outputs": []}
            cells.append(code)
            if cell.status == "rejected":
                cells.append(_markdown(REJECTED_NOTE))
            else:
                count = code["execution_count"] = numbers[node.id]
                code["outputs"] = cell_outputs(cell)
                for o in code["outputs"]:
                    if o["output_type"] == "execute_result":
                        o["execution_count"] = count
                code["metadata"]["kernelchat"]["duration"] = round(cell.duration, 3)
        elif m.role == "tool":  # another tool's result
            cells.append(_markdown("\n".join([f"**Tool result** ({inert_line(m.name or 'tool')})", "",
                                                *fence(m.content or "", "text")])))
        if (end := ending(node.outcome)) is not None:
            cells.append(_markdown(f"> **{inert_line(end)}**"))
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"  # nbformat 4.5 wants unique ids; stable ones keep diffs small
    u = conv.usage
    return {"nbformat": NBFORMAT, "nbformat_minor": NBFORMAT_MINOR, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"},
                         "kernelchat": {"id": conv.id, "model": conv.model, "usage": u.model_dump(mode="json")}}}


def notebook_json(conv: ConversationFile) -> str:
    """The notebook as the text of an .ipynb file."""
    return json.dumps(to_notebook(conv), indent=1, ensure_ascii=False) + "\n"
