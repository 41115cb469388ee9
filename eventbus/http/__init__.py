"""The HTTP layer: Klein apps (one per resource), the router that mounts them
and renders every error, request parsing, response rendering, long responses
(history, SSE, broadcast groups, flow control) and the twisted.web Site.

Layer rule: may import the domain modules, :mod:`eventbus.storage` (through
their public functions), :mod:`eventbus.model` and :mod:`eventbus.errors`.
Nothing outside this package imports it but :mod:`eventbus.tap`.
"""
