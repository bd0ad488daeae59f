"""How a worker process starts: celery's own worker command, without the rest of
celery's command line (workers/celery_worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from support.services import REPO_ROOT

NEVER_IN_A_WORKER = ("prompt_toolkit", "click_repl", "flower", "tornado", "rich", "pygments",
                     "yaml", "django", "opentelemetry", "charset_normalizer", "psutil")

# Runs a command's main() with ``--help`` in a fresh interpreter, imports the tasks and
# celery's worker application (as a worker does once it starts), then prints the top-level packages really imported (a
# refused one is None in sys.modules).
_PROBE = """
import json, sys
sys.argv = [sys.argv[0], *json.loads(sys.argv[1])]
try:
    {call}
except SystemExit:
    pass
import workers.tasks, celery.apps.worker
print(json.dumps(sorted({{name.split(".")[0] for name, module in sys.modules.items()
                         if module is not None}})))
"""


def _imported(call: str, argv: list[str]) -> tuple[set[str], str, str]:
    """The packages imported, the help text and stderr."""
    done = subprocess.run([sys.executable, "-c", _PROBE.format(call=call), json.dumps(argv)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    *help_text, modules = done.stdout.strip().splitlines()
    return set(json.loads(modules)), "\n".join(help_text), done.stderr


def test_a_worker_starts_without_the_cli_parts_it_never_uses():
    """`harvest worker`'s command parses celery's worker options (its help lists them) and
    imports none of prompt_toolkit (celery's REPL), Flower's web app (a celery.commands
    plugin here, as in an image shared with Flower), rich or pygments: ~12 MB of RSS that
    every worker process used to carry; nor PyYAML, Django, psutil or opentelemetry, which
    kombu, celery and redis-py import whenever they are installed (here: dev extras), nor
    charset_normalizer (requests' encoding guess for Response.text, ~3 MB), whose
    absence requests would warn about."""
    from harvester.terminal.commands import worker_argv

    argv = worker_argv(["--help"])
    assert argv[1:3] == ["-m", "workers.celery_worker"]
    imported, help_text, stderr = _imported("import workers.celery_worker as w; w.main()",
                                            argv[3:])
    assert "--concurrency" in help_text and "--pool" in help_text
    assert {"celery", "kombu", "requests"} <= imported
    assert not imported & set(NEVER_IN_A_WORKER), sorted(imported & set(NEVER_IN_A_WORKER))
    assert "Warning" not in stderr, stderr[-2000:]


def test_the_umbrella_celery_command_still_imports_them_here():
    """The check above can fail: in this environment (Flower, PyYAML, Django and psutil
    installed as dev extras) `python -m celery ... worker --help` imports all of them, and
    prompt_toolkit."""
    imported, help_text, _ = _imported("from celery.__main__ import main; main()",
                                    ["-A", "workers.app:app", "worker", "--help"])
    assert "--concurrency" in help_text
    assert {"prompt_toolkit", "flower", "rich", "pygments", "yaml", "django",
            "charset_normalizer", "psutil"} <= imported
