"""The bundled demo API: a small, fast, deterministic paginated JSON API.

It serves every pagination style the harvester understands (page, offset,
cursor, next_url, RFC 8288 Link), JSON Lines pages, arbitrarily large streamed
bodies, and switchable injected faults (error statuses, cut or stalled bodies,
HTML or invalid JSON served with 200, truncated gzip). The README demo, the
tests and the benchmarks run the harvester against it.

Run it with ``python -m harvester.demo --port 8765``; build it in-process with
:func:`harvester.demo.api.create_app`.
"""
