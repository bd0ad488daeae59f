"""How a worker process starts: celery's own worker command, without the rest of
celery's command line (workers/celery_worker.py)."""

from __future__ import annotations

import subprocess
import sys

from support.services import REPO_ROOT

NEVER_IN_A_WORKER = ("prompt_toolkit", "click_repl", "flower", "tornado", "rich", "pygments")


def _imported(importtime_log: str) -> set[str]:
    """Top-level packages imported, from ``-X importtime`` lines. rich and pygments are
    refused (None in sys.modules): each has a line for the attempt and no submodule."""
    names = [line.split("|")[-1].strip() for line in importtime_log.splitlines()
             if line.startswith("import time:")]
    packages = {name.split(".")[0] for name in names}
    return {package for package in packages if package not in ("rich", "pygments")
            or any(name.startswith(package + ".") for name in names)}


def test_a_worker_starts_without_the_cli_parts_it_never_uses():
    """`harvest worker`'s command parses celery's worker options (its help lists them) and
    imports none of prompt_toolkit (celery's REPL), Flower's web app (a celery.commands
    plugin here, as in an image shared with Flower), rich or pygments: ~12 MB of RSS that
    every worker process used to carry."""
    from harvester.terminal.commands import worker_argv

    argv = worker_argv(["--help"])
    assert argv[1:3] == ["-m", "workers.celery_worker"]
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--concurrency" in done.stdout and "--pool" in done.stdout
    imported = _imported(done.stderr)
    assert "celery" in imported and "kombu" in imported
    assert not imported & set(NEVER_IN_A_WORKER), sorted(imported & set(NEVER_IN_A_WORKER))


def test_the_umbrella_celery_command_still_imports_them_here():
    """The check above can fail: in this environment (Flower installed as a dev extra)
    `python -m celery ... worker --help` imports Flower and prompt_toolkit."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "celery", "-A",
                           "workers.app:app", "worker", "--help"], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"prompt_toolkit", "flower", "rich", "pygments"} <= _imported(done.stderr)
