"""The `error` a failed alignment job stores and the API returns: a short reason, never the whole exception.

Ray's errors carry the remote traceback and the worker's node address ("ray::AlignmentWorker.align()
(pid=4242, ip=10.0.3.7, actor_id=...)"); those belong in the log, not in a response any key of the job's
user can read.
"""

from __future__ import annotations

import re

MAX_REASON_CHARS = 200
_TRACEBACK = "Traceback (most recent call last)"
# IPv4 with an optional port, a bracketed IPv6 with an optional port, and Ray's "ip=" / "pid=" / "*_id=" parts.
_ADDRESS = re.compile(
    r"\[[0-9A-Fa-f:.]+\](?::\d+)?"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
    r"|\b(?:ip|pid|node_ip|address|[a-z]+_id)=[^\s,)]+"
)


def short_reason(exc: BaseException) -> str:
    """`Type: first line of the message`, clipped, without traceback or addresses.

    Ray wraps a worker's exception (`.cause`): the reason names the real one. Where the message itself holds
    a traceback or opens with Ray's task header, its last line (the exception line) is the reason."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if any(line.startswith(_TRACEBACK) for line in lines) or (lines and lines[0].startswith("ray::")):
        lines = lines[-1:]  # a Ray task header ("ray::Actor.method() (pid=…, ip=…)") is no reason either
    text = _ADDRESS.sub("<redacted>", lines[0]) if lines else ""
    text = re.sub(r"\s*\((?:<redacted>[,\s]*)+\)", "", text)  # "(pid=…, ip=…)" leaves nothing to read
    name = type(exc).__name__
    reason = f"{name}: {text}" if text else name
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"
