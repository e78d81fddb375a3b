"""`voxtral-edge serve`: the speech service of a head unit (needs the `[serve]` extra: starlette, uvicorn).

    scheduler.py  one worker thread steps the Synthesizer frame by frame for five priority classes;
                  a higher class preempts at the next frame, the preempted utterance resumes later
    cache.py      finished phrases on disk (PCM), keyed by everything that changes the samples, LRU
    app.py        the OpenAI-compatible HTTP API (starlette) and the page at /
    server.py     uvicorn with the limits, the loopback/API-key rule and a clean SIGTERM

scheduler.py and cache.py import nothing beyond the runtime; only app.py and server.py need the extra.
"""
