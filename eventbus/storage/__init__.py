"""Storage: every SQL statement of the event bus, and nothing else.

``database`` (pool, reconnects, time limits), ``migrate`` + ``schema/``,
``notify`` (the NOTIFY protocol and the LISTEN connection), one module per
table group (``events``, ``consumers``, ``webhooks``) and ``embedded`` (the
private PostgreSQL).

Layer rule: imports only :mod:`eventbus.model`, :mod:`eventbus.errors` and
:mod:`eventbus.retry`; nothing above it (domain, webhooks, http) is imported here.
"""
