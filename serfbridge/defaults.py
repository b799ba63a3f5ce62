"""Default values that more than one module needs, defined once.

The bottom of the package: ``config`` (the settings' defaults), the RPC client (its own
default address and tag limit), the handler and the planners all read these, so a
default changes in one place. Must not: import anything, from the package or outside it.
"""

from __future__ import annotations

#: The local Serf agent's RPC address (``serf agent -rpc-addr``'s default).
RPC_ADDR = "127.0.0.1:7373"
#: memberlist's MetaMaxSize in upstream Serf, Debian's 0.9.4 included
#: (``reference/serf-rpc.md`` §8).
TAG_LIMIT = 512
#: The default --tag-allow: every tag but Cloudy's bulky ``services`` list and our ``k8s``.
TAG_ALLOW = r"(?!(services|k8s)$).*"
#: Where the daemon takes events handed over by ``serfbridge handle``.
HANDLER_SOCKET = "/run/serfbridge/handler.sock"
#: The daemon's health, metrics and /status listener.
HTTP_ADDR = "127.0.0.1:9473"
#: Our labels and annotations live under this prefix.
LABEL_PREFIX = "serfbridge.io"
#: The Kubernetes cluster's name in our keys and owner marks.
CLUSTER = "default"
#: How many nodes publish each Service port.
REPLICAS = 2
#: The Cloudy cloud's name in published host names (``<node>.<cloud>.local``).
CLOUD_NAME = "guifi"

# Limits of the formats we speak, not defaults; here so each is stated once.
#: The highest TCP/UDP port number.
MAX_PORT = 65535
#: The longest DNS subdomain name (RFC 1123), which Kubernetes label prefixes must be.
DNS_NAME_MAX = 253
#: The namespace imported Cloudy services appear in (``--import-namespace``).
IMPORT_NAMESPACE = "cloudy"
