# Harvester image: the `harvest` CLI, the Celery workers and Flower.
#
#   docker build -t harvester:local .
#   docker run --rm -e HARVEST_REDIS_URL=redis://host:6379/0 harvester:local   # a worker
#
# Every runtime dependency (hiredis, ijson, zlib-ng) ships manylinux wheels for
# CPython 3.11, so the slim image needs no compiler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a copy of just the sources (never .venv, .git or local data),
# then drop the copy: the code runs from site-packages only.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY harvester ./harvester
COPY workers ./workers
RUN pip install . "flower>=2.0" \
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

# Flower's web UI (only used by the flower service).
EXPOSE 5555

# A Celery worker with the project's settings; `harvest worker --help` lists
# the Celery worker options that can be appended.
CMD ["harvest", "worker"]
