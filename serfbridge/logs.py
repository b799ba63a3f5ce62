"""Logging set-up: one line per event, as text or JSON (``--log-format json``).

Nothing logged by serfbridge contains the RPC auth key: the key is never formatted into
a message (see ``config.Settings`` and ``rpc.client``). Messages carry text from others
(member names from gossip, event names from the handler socket), so every message is
escaped before it is written: a control character, a line separator or a bidi control
becomes ``\\xNN`` / ``\\uNNNN`` and can neither start a forged line nor reorder one. Must
not: configure anything but the root handler.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from serfbridge import printable


def escape(text: str) -> str:
    """``text`` with every unsafe character spelled out (a tab too: it is one line)."""
    return printable.escape_controls(text, by_name=False)


class TextFormatter(logging.Formatter):
    """The plain formatter, with the message escaped (a traceback under -v is not)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": escape(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text", verbose: int = 0, *, daemon: bool = False) -> None:
    """Root logging: WARNING for commands, INFO for the daemon, DEBUG with -v."""
    level = logging.DEBUG if verbose else (logging.INFO if daemon else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
