"""``harvest serve``: the job service (FastAPI on uvicorn) and its dashboard.

:mod:`.app` routes, :mod:`.events` the SSE progress stream (pure),
:mod:`.metrics` the Prometheus collector, ``dashboard.html`` the page at ``/``.
"""
