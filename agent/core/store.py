"""Conversations on disk: atomic JSON saves and loading (the exports are agent.core.export and
agent.core.notebook_export)."""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.dirs import conversations_dir  # noqa: F401 - store.conversations_dir() stays
from agent.core.messages import Usage
from agent.core.tree import Tree

FORMAT = "kernelchat.conversation/1"
MAX_DOCUMENT_BYTES = 1 << 30  # a conversation (figures embedded) past 1 GiB is refused, not read


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


def file_name(conv_id: str, created: str | None = None, first_prompt: str | None = None, words: int = 8) -> str:
    """A readable conversation file name: `2026-12-01-0531-what-is-2-100-use-python-<id>.json`, the
    creation time (local, from an ISO `created`; now without one), a slug of the first prompt (ASCII,
    at most `words` words and 48 characters), and the id last, so that lookups by id or prefix work."""
    try:
        when = datetime.fromisoformat(created).astimezone() if created else datetime.now()
    except ValueError:
        when = datetime.now()
    ascii_text = unicodedata.normalize("NFKD", first_prompt or "").encode("ascii", "ignore").decode()
    slug = "-".join(re.findall(r"[a-z0-9]+", ascii_text.lower())[:words])[:48].strip("-")
    return "-".join(p for p in (when.strftime("%Y-%m-%d-%H%M"), slug, conv_id) if p) + ".json"


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write-then-rename in the same folder, fsynced: a crash leaves the old file or the new one.
    The rename replaces whatever is at `path` (a link too) and never writes through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
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


def _size_of(path: Path) -> str:
    try:
        return f"{path.stat().st_size:,} bytes"
    except OSError:
        return "size unknown"


def read_document(path: str | Path, fmt: str, noun: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A kernelchat JSON file of format `fmt`, or `error` saying plainly what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no {noun} at {str(path)!r}")
    what = f"{path}: not a kernelchat {noun}"
    try:
        with open(path, "rb") as f:  # the size is checked before it is read (read(n) reserves n bytes)
            size = os.fstat(f.fileno()).st_size
            raw = f.read(size + 1) if size <= MAX_DOCUMENT_BYTES else b""
        too_large = size > MAX_DOCUMENT_BYTES
        data = None if too_large else json.loads(raw.decode("utf-8"))
    except MemoryError:
        raise error(f"{path}: not enough memory to load the {noun} "
                    f"({_size_of(path)}); free some memory or raise the process's limit") from None
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
    if too_large:
        raise error(f"{path}: the {noun} is over {MAX_DOCUMENT_BYTES:,} bytes, more than kernelchat loads")
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
    except MemoryError:
        raise ConversationError(f"{path}: not enough memory to load the conversation ({_size_of(path)}); "
                                "free some memory or raise the process's limit") from None
    conv.tree.repair_interrupted()
    return conv
