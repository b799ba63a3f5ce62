"""Defaults that more than one module needs, in one low module that imports nothing.

Read by ``config`` (the settings' defaults) and by the handler's hand-over path (which
must not import ``config``: it is slow to load). Must not: import anything.
"""

#: Where the daemon listens for events handed over by ``serfbridge-handle``.
HANDLER_SOCKET = "/run/serfbridge/handler.sock"
