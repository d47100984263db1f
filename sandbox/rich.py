"""Rich outputs (images, HTML, Markdown) of a cell: the host saves images under `outputs/`
with `safefs` (nothing the sandbox planted there is followed or written through) and keeps
their bytes in the result, so nothing later reads a path the sandbox could swap."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from . import safefs
from .result import RichOutput

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg", "image/gif": "gif"}
TEXT_TYPES = ("text/html", "text/markdown", "text/latex", "application/json")
OUTPUTS = "outputs"


def _image_bytes(mime: str, payload: object, max_bytes: int | None) -> bytes:
    """The image's bytes from a Jupyter display payload; ValueError when unusable or too big."""
    if isinstance(payload, list) and all(isinstance(p, str) for p in payload):
        payload = "".join(payload)
    if not isinstance(payload, str):
        raise ValueError(f"its {mime} data is not text")
    # Refuse before decoding: base64 is 4/3 of the bytes, SVG text at least its length in bytes.
    estimate = len(payload) * 3 // 4 if mime != "image/svg+xml" else len(payload)
    if max_bytes is not None and estimate > max_bytes + 4:
        raise safefs.FileTooLarge(f"it is about {estimate / 2**20:,.1f} MB, over max_file_mb "
                                  f"({max_bytes / 2**20:,.0f} MB)")
    if mime == "image/svg+xml":
        data = payload.encode("utf-8", "replace")
    else:
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise ValueError(f"its {mime} data is not valid base64") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise safefs.FileTooLarge(f"it is {len(data) / 2**20:,.1f} MB, over max_file_mb ({max_bytes / 2**20:,.0f} MB)")
    return data


def save_rich(data: dict, workspace: Path, *, max_bytes: int | None, text_chars: int,
              owner: safefs.Owner | None = None) -> tuple[list[RichOutput], list[str]]:
    """The rich outputs of one display message, and notes (in words) on images not saved.

    One image per message (the richest format), written as a new file `outputs/figure-NNNN.ext`
    (a taken name, whatever is there, gets a suffix); its bytes travel in `RichOutput.data`.
    Over `max_bytes`: neither saved nor kept. A hostile `outputs/`: kept in the result only."""
    outs: list[RichOutput] = []
    notes: list[str] = []
    for mime, ext in IMAGE_TYPES.items():
        if mime not in data:
            continue
        try:
            raw = _image_bytes(mime, data[mime], max_bytes)
        except ValueError as e:
            notes.append(f"A figure ({mime}) was not saved: {e}.")
            break
        out = RichOutput(mime=mime, data=base64.b64encode(raw).decode("ascii"))
        n = sum(1 for name in safefs.list_names(workspace, OUTPUTS) if name.startswith("figure-")) + 1
        try:
            rel = safefs.write_new(workspace, f"{OUTPUTS}/figure-{n:04d}.{ext}", raw, owner=owner)
            out.path = str(workspace / rel)
        except (ValueError, OSError) as e:
            why = e if isinstance(e, ValueError) else (e.strerror or e)
            notes.append(f"A figure ({mime}) could not be saved as a file ({why}); its image is kept in the result.")
        outs.append(out)
        break
    for mime in TEXT_TYPES:
        if mime in data and not (mime == "text/html" and outs):
            value = data[mime]
            text = value if isinstance(value, str) else json.dumps(value)
            outs.append(RichOutput(mime=mime, text=text[:text_chars]))
    return outs, notes
