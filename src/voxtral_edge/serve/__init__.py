"""`voxtral-edge serve`: the speech service of a head unit (needs the `[serve]` extra: starlette, uvicorn,
prometheus_client).

    scheduler.py  one worker thread steps the Synthesizer frame by frame for five priority classes;
                  a higher class preempts at the next frame, the preempted utterance resumes later; aging
                  keeps a class from starving; identical requests in flight share one synthesis; deadlines
    cache.py      finished phrases on disk (PCM), keyed by everything that changes the samples, LRU;
                  a folder that is read-only or full costs entries, never requests
    guards.py     the bundle's files watched (read leases) and the memory left under the process's limits
    app.py        the OpenAI-compatible HTTP API (starlette) and the page at /
    metrics.py    GET /metrics in Prometheus' text format
    server.py     uvicorn with the limits, the loopback/API-key rule, the unix socket and a clean SIGTERM

scheduler.py, cache.py and guards.py import nothing beyond the runtime; app.py, metrics.py and server.py
need the extra.
"""
