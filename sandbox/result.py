"""What one execution returns."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["ok", "error", "timeout", "died"]


class RichOutput(BaseModel):
    """A display or result other than plain text: images as files, HTML/Markdown as text."""

    mime: str
    path: str | None = None  # images: the file the host wrote in the workspace's outputs folder
    # images: base64 of the image's bytes (SVG: of its UTF-8 text). Use this, not `path`, to show
    # or export an image: the sandbox can replace the file at `path` (with a link to a host file).
    data: str | None = None
    text: str | None = None  # HTML, Markdown, LaTeX, JSON


class ExecResult(BaseModel):
    status: Status
    stdout: str = ""
    stderr: str = ""
    result: str | None = Field(default=None, description="text/plain of the last expression")
    outputs: list[RichOutput] = Field(default_factory=list)
    error_name: str | None = None
    error_value: str | None = None
    traceback: str | None = None
    duration: float = 0.0
    execution_count: int | None = None
    stdout_file: str | None = Field(default=None, description="full stdout when it was cut")
    stderr_file: str | None = Field(default=None, description="full stderr when it was cut")
    state_lost: bool = Field(default=False, description="the kernel restarted: variables and imports are gone")
    message: str | None = Field(default=None, description="what happened, in words, when not plainly ok")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def images(self) -> list[str]:
        return [o.path for o in self.outputs if o.path]

    @property
    def truncated(self) -> bool:
        return bool(self.stdout_file or self.stderr_file)
