"""The names of Serf's member events, in one place (``reference/serf-rpc.md`` §5).

Imported on the handler's hand-over path, where every millisecond of start-up holds
Serf's serial event loop: so this module imports nothing at all. ``rpc.models``,
``handoff``, the handler, the daemon's stream filter and ``cli.serf`` all read it.
"""

MEMBER_EVENTS = ("member-join", "member-leave", "member-failed", "member-update", "member-reap")
#: The stream filter that subscribes to every member event.
MEMBER_FILTER = ",".join(MEMBER_EVENTS)
