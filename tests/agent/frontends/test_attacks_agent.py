"""Round two of attacks on the agent side, with a real kernel: what reaches the terminal."""

from __future__ import annotations

import json

import pytest

from agent.frontends import cli

# 8-bit C1 controls and a bidi override, as the kernel prints them: JSON escapes only C0 controls
# unless told to escape everything that is not ASCII.
C1 = "\x9b?1049h\x9d0;PWNED-C1\x9c\u202eevil"


@pytest.mark.timeout(120)
def test_exec_json_writes_no_raw_c1_or_bidi_control(capsys, tmp_path):
    code = cli.main(["exec", f"print({C1!r})", "--workspace", str(tmp_path), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["stdout"] == C1 + "\n"  # all of it is there...
    assert out.isascii(), [c for c in out if not c.isascii()]  # ...escaped, not written raw
