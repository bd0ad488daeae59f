"""Job files and measurements shared by the integration and fault suites."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_HTTP = ("timeout_connect = 2\ntimeout_read = 3\npage_deadline = 20\nretries = 3\n"
                "backoff_factor = 0.05\nbackoff_max = 0.2")


def job_toml(path: Path, *, url: str, params: dict, pagination: str, http: str = "",
             limits: str = "", extra: str = "", headers: dict | None = None,
             out: str = "out", name: str = "faults") -> Path:
    """A job file at ``path``; ``http`` replaces the fast-retrying default [http]."""
    table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in params.items())
    head = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in (headers or {}).items())
    path.write_text(f'''[job]
name = "{name}"
url = "{url}"
params = {{ {table} }}
headers = {{ {head} }}

[pagination]
{pagination}

[http]
{http or DEFAULT_HTTP}

[limits]
{limits}

[output]
dir = "{out}"
{extra}
''')
    return path


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """The most requests seen in any interval of ``window`` seconds."""
    times = sorted(times)
    best = 0
    start = 0
    for end, stamp in enumerate(times):
        while stamp - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
