"""Serf RPC: the pure protocol core (`protocol`, its events in `events`, the typed
messages in `models`), the I/O shell around it (`transport` → `wire` → `hub`/`stream` →
`client`) and the tag-size budget (`budget`). Without this file the wheel leaves the
whole subpackage out."""
