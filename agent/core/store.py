"""Conversations on disk: atomic JSON saves, loading, and Markdown / self-contained HTML export."""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.dirs import conversations_dir  # noqa: F401 - store.conversations_dir() stays
from agent.core.messages import Usage
from agent.core.tree import CellRecord, Figure, Tree

FORMAT = "kernelchat.conversation/1"


class ConversationError(ValueError):
    """A conversation file that cannot be loaded; the message names the file and what is wrong."""


class Settings(BaseModel):
    """What a conversation file records beside its tree (other keys are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    max_steps: int = Field(default=10, ge=1)
    sync: Literal["replay", "keep", "reset"] = "replay"
    usages: list[Usage] = Field(default_factory=list)  # one per model request


class ConversationFile(BaseModel):
    format: str = FORMAT
    id: str
    model: str
    system: str | None = None
    settings: Settings = Field(default_factory=Settings)
    usage: Usage = Field(default_factory=Usage)
    tree: Tree


def atomic_write(path: Path, text: str) -> None:
    """Write-then-rename in the same folder, fsynced: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: Path, conv: ConversationFile) -> None:
    atomic_write(path, conv.model_dump_json(indent=1))


def read_document(path: str | Path, fmt: str, noun: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A kernelchat JSON file of format `fmt`, or `error` saying plainly what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no {noun} at {str(path)!r}")
    what = f"{path}: not a kernelchat {noun}"
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except OSError as e:
        raise error(f"{path}: cannot read the {noun} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} (not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} (invalid JSON at line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise error(f"{what} (its JSON is nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{what} (invalid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{what} (expected format {fmt!r})")
    return data


def load(path: Path) -> ConversationFile:
    """A conversation file, checked (ConversationError names the file and the fault), with tool calls
    left without a result (kernelchat was killed mid-cell) answered by an 'interrupted' result."""
    data = read_document(path, FORMAT, "conversation", ConversationError)
    try:
        conv = ConversationFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))[:120] or "the document"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConversationError(f"{path}: not a valid kernelchat conversation ({where}: {msg})") from None
    except RecursionError:
        raise ConversationError(f"{path}: not a valid kernelchat conversation (nested too deeply)") from None
    conv.tree.repair_interrupted()
    return conv


def _path_items(conv: ConversationFile):
    """(role, text, cell) along the active branch, tool calls folded into their results."""
    for node in conv.tree.path():
        m = node.message
        if m.role == "system":
            continue
        if m.role == "assistant" and m.content:
            yield "assistant", m.content, None
        elif m.role == "user":
            yield "user", m.content or "", None
        elif m.role == "tool":
            yield "tool", m.content or "", node.cell


def to_markdown(conv: ConversationFile) -> str:
    out = [f"# kernelchat conversation {conv.id}", "", f"Model: `{conv.model}`", ""]
    for role, text, cell in _path_items(conv):
        if role == "user":
            out += ["## User", "", text, ""]
        elif role == "assistant":
            out += ["## Assistant", "", text, ""]
        elif cell is not None:
            out += ["```python", cell.code.rstrip(), "```", "", "```text", cell.output.rstrip(), "```", ""]
            out += [f"![{_alt(f)}]({_data_uri(f)})" for f in cell.figures]
            out += [f"[image: {p}]" for p in _unstored(cell)]
            out += [""] if cell.figures or cell.images else []
        else:
            out += ["```text", text.rstrip(), "```", ""]
    u = conv.usage
    out += ["---", f"Tokens: {u.prompt_tokens:,} prompt, {u.completion_tokens:,} completion; "
            f"cost ${u.cost_usd:.4f}"]
    return "\n".join(out) + "\n"


def _data_uri(f: Figure) -> str:
    return f"data:{f.mime};base64,{f.data}"  # both checked by Figure's patterns: nothing to escape


def _alt(f: Figure) -> str:
    return html.escape(f.name or "figure").replace("[", "(").replace("]", ")")


def _unstored(cell: CellRecord) -> list[str]:
    """Images of an older file, which kept only their paths. They are not read back: the sandboxed
    code could have made any of them a link to a host file, which the export would then inline."""
    stored = {f.name for f in cell.figures}
    return [p for p in cell.images if PurePath(p).name not in stored]


def _img(f: Figure) -> str:
    return f'<img alt="{_alt(f)}" src="{_data_uri(f)}">'


CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
.user{background:#eef4ff;border-radius:8px;padding:.6rem 1rem;margin:1rem 0}
.assistant{padding:.2rem 1rem;white-space:pre-wrap}
pre{background:#f6f6f6;padding:.6rem;border-radius:6px;overflow-x:auto;white-space:pre-wrap}
pre.code{border-left:3px solid #4a7} pre.out{border-left:3px solid #aaa}
img{max-width:100%;display:block;margin:.5rem 0} footer{color:#777;margin-top:2rem}"""


def to_html(conv: ConversationFile) -> str:
    """One self-contained page: plots are inlined as data URIs."""
    body = [f"<h1>kernelchat conversation</h1><p>Model: <code>{html.escape(conv.model)}</code></p>"]
    for role, text, cell in _path_items(conv):
        if role == "user":
            body.append(f'<div class="user"><b>User</b><br>{html.escape(text)}</div>')
        elif role == "assistant":
            body.append(f'<div class="assistant">{html.escape(text)}</div>')
        elif cell is not None:
            body.append(f'<pre class="code">{html.escape(cell.code)}</pre>')
            body.append(f'<pre class="out">{html.escape(cell.output)}</pre>')
            body += [_img(f) for f in cell.figures]
            body += [f'<p class="missing">[image: {html.escape(p)} (not stored in this conversation)]</p>'
                     for p in _unstored(cell)]
        else:
            body.append(f'<pre class="out">{html.escape(text)}</pre>')
    u = conv.usage
    body.append(f"<footer>Tokens: {u.prompt_tokens:,} prompt, {u.completion_tokens:,} completion; "
                f"cost ${u.cost_usd:.4f}</footer>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kernelchat {conv.id}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
