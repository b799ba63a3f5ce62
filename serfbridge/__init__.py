"""serfbridge: keep a Serf gossip cluster and a Kubernetes cluster in sync, both ways."""

__version__ = "0.1.0"
