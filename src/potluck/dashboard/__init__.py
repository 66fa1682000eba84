"""``potluck dashboard``: a read-only web view of run directories.

It reads what a run writes (``config.toml``, ``metrics.jsonl``, ``ledger.jsonl``, the
commit marks; see :mod:`potluck.core.layout`) and never writes to a run directory::

    runs.py     which run directories are shown, and a summary of each (status, task,
                strategy, rounds, best metric)
    tail.py     following ``metrics.jsonl`` as it grows: cheap stat polling, complete lines only
    ledger.py   the ledger view: entries with hashes and signatures, and the audit's verdict
    auth.py     the bind address and the token every request must carry off loopback
    app.py      the Starlette application: the page, JSON endpoints, the live stream (SSE)
    server.py   serving it with uvicorn on a socket bound beforehand

The page (``static/``) draws its charts with uPlot, vendored with its licence; nothing is
fetched from elsewhere at run time. Starlette and uvicorn come with the ``dashboard``
extra (``pip install 'potluck[dashboard]'``).
"""
