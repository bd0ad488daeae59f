# Harvester image: the `harvest` CLI, the Celery workers and Flower.
#
#   docker build -t harvester:local .
#   docker run --rm -e HARVEST_REDIS_URL=redis://host:6379/0 harvester:local   # a worker
#
# Two stages, both on python:3.11-slim:
#   demo       the bundled demo API (the project with its `demo` extra: fastapi,
#              uvicorn); built only when asked for (`--target demo`, or the
#              compose `demo` service). BuildKit skips it for the default build.
#   (last)     the harvester itself, with no extras: the default target.
#
# Every runtime dependency (hiredis, ijson, zlib-ng, uvloop, httptools) ships
# manylinux wheels for CPython 3.11, so the slim image needs no compiler.

# --------------------------------------------------------------------- demo API
FROM python:3.11-slim AS demo

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY harvester ./harvester
COPY workers ./workers
RUN pip install -c constraints.txt ".[demo]" \
    && cd / && rm -rf /src

WORKDIR /
# Serves nothing it must write: runs as nobody.
USER 65534:65534
EXPOSE 8765
# 0.0.0.0 inside the container: reachable by the other services on the compose
# network as http://demo:8765 (compose publishes no host port for it).
# The token comes from DEMO_API_TOKEN (unset = an open API).
CMD ["python", "-m", "harvester.demo", "--host", "0.0.0.0", "--port", "8765"]

# ------------------------------------------------------------ harvester (default)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a copy of just the sources (never .venv, .git or local data),
# then drop the copy: the code runs from site-packages only.
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY harvester ./harvester
COPY workers ./workers
# constraints.txt: the versions the test suite passed with (Flower's included);
# the serve extra is the job service (harvest serve: FastAPI, uvicorn).
RUN pip install -c constraints.txt ".[serve]" flower \
    && cd / && rm -rf /src

# Unprivileged user with fixed ids. /data is created here and owned by that
# user so that a named volume mounted there (empty on first use) inherits the
# ownership and is writable by the workers and the finalizer.
RUN groupadd --system --gid 10001 harvester \
    && useradd --system --uid 10001 --gid harvester --home-dir /app \
       --no-create-home --shell /usr/sbin/nologin harvester \
    && mkdir -p /app /data \
    && chown harvester:harvester /app /data

WORKDIR /app
USER 10001:10001

# Flower's web UI and the job service (only used by the flower and serve services).
EXPOSE 5555 8900

# A Celery worker with the project's settings; `harvest worker --help` lists
# the Celery worker options that can be appended.
CMD ["harvest", "worker"]
