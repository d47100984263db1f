"""Conversations as people read them: one self-contained HTML page, and Markdown with its images in
a folder beside it. Both show the active branch as the tree holds it: cells labelled `In [n]` as
the kernel counted them, errors as errors, each turn's answer marked, the labels a turn strategy put
on messages ("attempt 2"), and how a turn ended when it did not end in an answer (stopped, step
limit, budget, interrupted). Everything shown is escaped:
the text was written by a model and by sandboxed code. (The notebook export is agent.core.notebook_export.)"""

from __future__ import annotations

import base64
import binascii
import html
import os
import re
import stat
from pathlib import Path, PurePath
from urllib.parse import quote

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from agent.core.store import ConversationFile, atomic_write
from agent.core.tree import CellRecord, Figure, Node, TurnOutcome
from sandbox.safefs import UnsafePath, replace_file

FAILED = {"error": "Error", "timeout": "Timed out", "died": "Kernel died", "interrupted": "Interrupted"}
# What a turn's end says when the outcome carries no note of its own
ENDINGS = {"stopped": "stopped without an answer", "max_steps": "the step limit was reached without a final answer",
           "budget": "the budget refused the next request", "interrupted": "interrupted", "failed": "failed",
           "set_aside": "set aside: tried, not taken"}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg",
              "image/webp": "webp", "image/bmp": "bmp"}
_IMAGE_LINE = re.compile(r"^\[image saved: (.*)\]$")
_FORMATTER = HtmlFormatter(cssclass="hl")


# -- what every export shows alike -----------------------------------------------------------------

def shown_path(conv: ConversationFile) -> list[Node]:
    """The active branch without the system prompt."""
    return [n for n in conv.tree.path() if n.message.role != "system"]


def cell_numbers(nodes: list[Node]) -> dict[str, int]:
    """`In [n]` of each cell that ran (all but those the user refused): the kernel's execution count
    where it was recorded, else one more than the cell before (files written before counts were kept)."""
    out: dict[str, int] = {}
    n = 0
    for node in nodes:
        if node.cell is not None and node.cell.status != "rejected":
            n = node.cell.execution_count or n + 1
            out[node.id] = n
    return out


def answers(nodes: list[Node]) -> set[str]:
    """The ids of the messages that are a turn's answer: the last message of a turn, from the
    assistant, with text and no tool call, and no outcome other than "answered"."""
    out = set()
    for i, node in enumerate(nodes):
        m = node.message
        last = i + 1 == len(nodes) or nodes[i + 1].message.role == "user"
        if (last and m.role == "assistant" and (m.content or "").strip() and not m.tool_calls
                and (node.outcome is None or node.outcome.status == "answered")):
            out.add(node.id)
    return out


def ending(outcome: TurnOutcome | None) -> str | None:
    """How a turn that did not end in an answer ended, in words ("Turn ended: ..."); None for an answer."""
    if outcome is None or outcome.status == "answered":
        return None
    return f"Turn ended: {outcome.note or ENDINGS[outcome.status]}"


def tag_line(label: str) -> str:
    """A message's label (Node.label, set by a turn strategy) as a line of inert Markdown: `*attempt 2*`."""
    return f"*{inert_line(label)}*"


def shown_output(cell: CellRecord) -> tuple[str, list[str]]:
    """The cell's output as the model saw it, less the "[image saved: PATH]" lines of the images
    shown from their bytes; and the paths of images an older file kept without bytes."""
    stored = {f.name for f in cell.figures}
    kept = [line for line in cell.output.split("\n")
            if not ((m := _IMAGE_LINE.match(line)) and PurePath(m.group(1)).name in stored)]
    unstored = [p for p in cell.images if PurePath(p).name not in stored]  # never read back: see tree.Figure
    return "\n".join(kept).strip("\n"), unstored


def _alt(f: Figure) -> str:
    """A figure's name as the alt text of an image of ours: one line, no bracket or backslash that
    could end it early (the kernel chose the name)."""
    return html.escape(" ".join((f.name or "figure").split())).replace("[", "(").replace("]", ")").replace("\\", "/")


# -- HTML --------------------------------------------------------------------------------------------

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
.user{background:#eef4ff;border-radius:8px;padding:.6rem 1rem;margin:1rem 0}
.assistant{padding:.2rem 1rem;white-space:pre-wrap}
.answer{border:2px solid #2a7;background:#f0fbf4;border-radius:8px;padding:.6rem 1rem;margin:1rem 0;white-space:pre-wrap}
.label{font-weight:bold;font-size:.85em;color:#555;white-space:normal}
.answer>.label{color:#2a7}
.tag{display:inline-block;font-size:.8em;background:#eee;border-radius:4px;padding:0 .4rem;margin:.6rem 0 0}
.outcome{border-left:4px solid #d80;background:#fff6e6;padding:.4rem 1rem;margin:1rem 0}
.cell{margin:.8rem 0}.prompt{font:12px monospace;color:#307fc1}
.hl pre,pre{background:#f6f6f6;padding:.6rem;border-radius:6px;overflow-x:auto;white-space:pre-wrap;margin:.2rem 0}
.hl{border-left:3px solid #4a7;border-radius:6px} pre.out{border-left:3px solid #aaa}
.err pre.out{border:1px solid #c33;border-left:4px solid #c33;background:#fdecec}
.err .prompt,.status{color:#c33;font-weight:bold}
img{max-width:100%;display:block;margin:.5rem 0} footer{color:#777;margin-top:2rem}
""" + _FORMATTER.get_style_defs(".hl")


def to_html(conv: ConversationFile) -> str:
    """One self-contained page (no script, no outside resource): plots are inlined as data URIs."""
    nodes = shown_path(conv)
    numbers, answer_ids = cell_numbers(nodes), answers(nodes)
    body = [f"<h1>kernelchat conversation</h1><p>Model: <code>{html.escape(conv.model)}</code></p>"]
    for node in nodes:
        m = node.message
        if node.label is not None:
            body.append(f'<div class="tag">{html.escape(node.label)}</div>')
        if m.role == "user":
            body.append(f'<div class="user"><div class="label">User</div>{html.escape(m.content or "")}</div>')
        elif m.role == "assistant" and m.content:
            if node.id in answer_ids:
                body.append(f'<div class="answer"><div class="label">Answer</div>{html.escape(m.content)}</div>')
            else:
                body.append(f'<div class="assistant">{html.escape(m.content)}</div>')
        elif m.role == "tool" and node.cell is not None:
            body.append(_html_cell(node.cell, numbers.get(node.id)))
        elif m.role == "tool":  # a tool's images (an MCP server's): mime and data checked by Figure's patterns
            body.append(f'<div class="cell"><div class="prompt">{html.escape(m.name or "tool")}:</div>'
                        f'<pre class="out">{html.escape(m.content or "")}</pre>'
                        + "".join(f'<img alt="{_alt(f)}" src="data:{f.mime};base64,{f.data}">' for f in m.images)
                        + '</div>')
        if (end := ending(node.outcome)) is not None:
            body.append(f'<div class="outcome"><b>{html.escape(end)}</b></div>')
    u = conv.usage
    body.append(f"<footer>Tokens: {u.prompt_tokens:,} prompt, {u.completion_tokens:,} completion; "
                f"cost ${u.cost_usd:.4f}</footer>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kernelchat {html.escape(conv.id)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _html_cell(cell: CellRecord, n: int | None) -> str:
    failed = FAILED.get(cell.status)
    prompt = f"In [{n}]:" if n is not None else "Not run:"
    status = f' <span class="status">{failed}</span>' if failed else ""
    parts = [f'<div class="cell{" err" if failed else ""}"><div class="prompt">{prompt}{status}</div>',
             highlight(cell.code, PythonLexer(), _FORMATTER)]  # pygments escapes what it writes
    text, unstored = shown_output(cell)
    if text.strip():
        parts.append(f'<pre class="out">{html.escape(text)}</pre>')
    # mime and data are checked by Figure's patterns: nothing in them to escape
    parts += [f'<img alt="{_alt(f)}" src="data:{f.mime};base64,{f.data}">' for f in cell.figures]
    parts += [f'<p class="missing">[image: {html.escape(p)} (not stored in this conversation)]</p>' for p in unstored]
    return "".join(parts) + "</div>"


# -- Markdown -----------------------------------------------------------------------------------------

def fence(text: str, lang: str) -> list[str]:
    """A fenced block that the text cannot close: the fence is longer than any run of backticks in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    return [marks + lang, text.rstrip(), marks, ""]


# The model's and the kernel's text in Markdown: readable, but nothing in it is active in any viewer.
# Raw HTML, comments and autolinks all start with "<" and a letter, "/", "!" or "?"; an entity could
# spell a character the escapes below do not see; images (`![x](url)`, `![x][ref]`) fetch an address
# when the file is opened; links and reference definitions (which also hide their text) show an
# address other than their words, so they are shown as written, as the terminal shows them.
_FENCE_LINE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
_LANG = re.compile(r"[A-Za-z0-9_+#.-]{1,30}")
_DRAWN = {"mermaid", "geojson", "topojson", "stl"}  # blocks some viewers draw (diagrams, maps): shown as text
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]{1,32};)")
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
_BRACKET = r"(?<!\\)((?:\\\\)*)"  # after an even run of backslashes: the bracket itself is not escaped
_IMAGE = re.compile(_BRACKET + r"!\[")
_DEFINITION = re.compile(_BRACKET + r"\[(?=(?:[^\[\]\\]|\\.){0,999}\]:)")  # a label: at most 999, no "["
_LINK_TARGET = re.compile(r"\]([ \t]*)\(")


def _inert(text: str) -> str:
    text = _HTML_START.sub("&lt;", _ENTITY.sub("&amp;", text))  # entities first: "&lt;" is ours
    text = _DEFINITION.sub(r"\1\\[", _IMAGE.sub(r"\1!\\[", text))
    return _LINK_TARGET.sub(r"]\1\\(", text)


def inert_line(text: str) -> str:
    """Text from the model or the kernel as inert Markdown on one line (a title, a name, a note):
    whitespace, newlines too, collapsed to single spaces; see `inert_markdown`."""
    return _inert(" ".join(text.split()))


def inert_markdown(text: str) -> str:
    """The model's (or anyone's) Markdown, readable but inert: no raw HTML, comment or autolink
    (`<` shown), no entity, no image, link or reference definition (shown as written); its fenced
    code blocks kept verbatim, in fences of ours that nothing inside can close (an unclosed one runs
    to the end of the text, as in a viewer), after a blank line so that they open wherever they are."""
    lines, out, text_from = text.split("\n"), [], 0
    i = 0
    while i < len(lines):
        m = _FENCE_LINE.match(lines[i])
        if m is None or (m.group(2)[0] == "`" and "`" in m.group(3)):  # backticks in its info: not a fence
            i += 1
            continue
        if i > text_from:  # the text before, as a whole: a label or a link may span lines
            out.append(_inert("\n".join(lines[text_from:i])))
        indent, marks = len(m.group(1)), m.group(2)
        closing = re.compile(rf"[ \t]*{re.escape(marks[0])}{{{len(marks)},}}[ \t]*")
        end = next((j for j in range(i + 1, len(lines)) if closing.fullmatch(lines[j])), len(lines))
        lang = _LANG.match(m.group(3).strip())
        word = lang.group(0) if lang and lang.group(0).lower() not in _DRAWN else ""
        body = [line[min(indent, len(line) - len(line.lstrip(" "))):] for line in lines[i + 1:end]]  # as a list item's
        out.append("\n".join(["", *fence("\n".join(body), word)[:-1]]))
        i = text_from = end + 1
    if text_from < len(lines):
        out.append(_inert("\n".join(lines[text_from:])))
    return "\n".join(out)


def markdown(conv: ConversationFile, files_dir: str) -> tuple[str, dict[str, bytes]]:
    """The active branch as Markdown, and the images it links to: {path relative to the .md: bytes},
    each under `files_dir` (write them beside the .md: `write_markdown` does)."""
    nodes = shown_path(conv)
    numbers, answer_ids = cell_numbers(nodes), answers(nodes)
    out = [f"# kernelchat conversation {inert_line(conv.id)}", "", f"Model: {inert_line(conv.model)}", ""]
    files: dict[str, bytes] = {}
    for node in nodes:
        m = node.message
        if node.label is not None:
            out += [tag_line(node.label), ""]
        if m.role == "user":
            out += ["## User", "", inert_markdown(m.content or ""), ""]
        elif m.role == "assistant" and m.content:
            out += ["## Answer" if node.id in answer_ids else "## Assistant", "", inert_markdown(m.content), ""]
        elif m.role == "tool" and node.cell is not None:
            out += _md_cell(node.cell, numbers.get(node.id), files_dir, files)
        elif m.role == "tool":
            out += [f"**{inert_line(m.name or 'tool')}:**", ""] + fence(m.content or "", "text")
            out += md_figures(m.images, files_dir, files) + ([""] if m.images else [])
        if (end := ending(node.outcome)) is not None:
            out += [f"> **{inert_line(end)}**", ""]
    u = conv.usage
    out += ["---", f"Tokens: {u.prompt_tokens:,} prompt, {u.completion_tokens:,} completion; "
            f"cost ${u.cost_usd:.4f}"]
    return "\n".join(out) + "\n", files


def _md_cell(cell: CellRecord, n: int | None, files_dir: str, files: dict[str, bytes]) -> list[str]:
    failed = FAILED.get(cell.status)
    out = [f"**In [{n}]:**" if n is not None else "**Not run:**", ""] + fence(cell.code, "python")
    text, unstored = shown_output(cell)
    if text.strip():
        out += ([f"**{failed}**" if failed == "Error" else f"**Error** ({failed.lower()})", ""] if failed else [])
        out += fence(text, "text")
    out += md_figures(cell.figures, files_dir, files)
    out += [f"[image: {inert_line(p)}]" for p in unstored]
    return out + ([""] if cell.figures or unstored else [])


def md_figures(figures: list[Figure], files_dir: str, files: dict[str, bytes]) -> list[str]:
    """Image links, each figure's bytes added to `files` under `files_dir`."""
    out = []
    for f in figures:
        try:
            data = base64.b64decode(f.data, validate=True)
        except binascii.Error:
            out.append(f"[image: {_alt(f)} (its stored bytes are damaged)]")
            continue
        rel = f"{files_dir}/figure-{len(files) + 1}.{EXTENSIONS.get(f.mime, 'img')}"
        files[rel] = data
        out.append(f"![{_alt(f)}]({quote(rel)})")
    return out


FIGURE_NAME = re.compile(r"figure-\d+\.[a-z]+")


def write_markdown(path: str | Path, conv: ConversationFile, header: str = "") -> Path:
    """Write `header` and the Markdown to `path`, its images into the folder `<stem>_files` beside
    it (created, or reused when it is a real folder: never through a link), each written atomically."""
    path = Path(path)
    folder = path.parent / f"{path.stem}_files"
    text, files = markdown(conv, folder.name)
    if files:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise ValueError(f"cannot write the export's images to {folder}: it exists and is not a "
                                 "folder (a file or a link); remove it or export under another name") from None
        for rel, data in files.items():
            # The folder is opened O_NOFOLLOW for each file (a check then a path would let code in a
            # workspace swap in a link between the two); a link at the file's name is replaced.
            try:
                replace_file(path.parent, rel, [data])
            except UnsafePath as e:
                raise ValueError(f"cannot write the export's images to {folder} ({e}); remove it or "
                                 "export under another name") from None
    drop_stale_figures(folder, {Path(rel).name for rel in files})
    atomic_write(path, header + text)
    return path


def drop_stale_figures(folder: Path, keep: set[str]) -> None:
    """Remove the figures an earlier, longer export of the same name left in `folder` (only names
    this export writes, `figure-N.ext`). The folder is opened without following a link and names
    are unlinked relative to it: an unlink removes a link, never what it points to."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # no folder (no images, now or before), or not a real one
    try:
        for name in os.listdir(fd):
            if FIGURE_NAME.fullmatch(name) and name not in keep:
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass  # a folder of that name, or gone already
    finally:
        os.close(fd)
