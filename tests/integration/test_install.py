"""The package installed the way a user installs it: `pip install .` into a clean venv,
no extras, pinned by constraints.txt, then a real `--local` job with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support.output import assert_exactly_once
from support.services import REPO_ROOT


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory):
    """A venv with nothing but the package and what it declares (no demo, no dev extra)."""
    root = tmp_path_factory.mktemp("clean-install")
    source = root / "src"
    # A copy, so the build leaves nothing in the checkout.
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "build", "__pycache__", "tests", ".harvest-home", "*.so"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(REPO_ROOT / "constraints.txt"), str(source)],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def test_a_plain_install_runs_a_local_job_and_a_worker_imports(clean_venv, api, tmp_path):
    """`pip install .` (no extras) gives a `harvest` whose --local job (redis-server,
    Celery workers on kombu's Redis transport) ends 0 with every page exactly once, and
    whose worker app imports: every module the package imports is declared. The install
    built the C validator from source (a compiler is on this machine). The Python API
    imports too; `harvest serve`, an extra, names the extra to install."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HARVEST_HOME=str(tmp_path / "home"), PATH=f"{clean_venv / 'bin'}:{env['PATH']}")
    imports = subprocess.run(
        [str(clean_venv / "bin" / "python"), "-c",
         "import kombu.transport.redis, workers.app, harvester.cli, harvester.core.body as b;"
         " from harvester import Harvester, Job, JobStatus; import harvester.engine.output;"
         " print('ok' if b.NATIVE else 'no C validator')"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert imports.stdout.strip() == "ok", imports.stderr

    job = tmp_path / "job.toml"
    job.write_text(f'''[job]
name = "installed"
url = "{api.url}/items"
params = {{ per_page = 5, pages = 30 }}

[pagination]
style = "page"
total_pages_path = "meta.total_pages"

[output]
dir = "out"
''')
    run = subprocess.run([str(clean_venv / "bin" / "harvest"), "run", str(job), "--local"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert_exactly_once(tmp_path / "out", range(1, 31))
    verify = subprocess.run([str(clean_venv / "bin" / "harvest"), "verify", "out"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert verify.returncode == 0, verify.stderr
    # The job service is an extra: without it, `harvest serve` says how to get it.
    serve = subprocess.run([str(clean_venv / "bin" / "harvest"), "serve"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=60,
                           env={**env, "HARVEST_API_TOKEN": "t" * 24})
    assert serve.returncode == 2 and "harvester[serve]" in serve.stderr, serve.stderr
