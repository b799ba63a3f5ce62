"""Serf RPC: the pure protocol core (`protocol`), the socket client (`client`), the typed
messages (`models`) and the tag-size budget (`budget`). Without this file the wheel leaves
the whole subpackage out."""
