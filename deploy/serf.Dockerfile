# A tiny Serf agent image for docker-compose.yml (users who have Docker; not run in CI).
# Debian bookworm packages serf 0.9.4; the ENTRYPOINT is the serf CLI itself.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends serf \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/bin/serf"]
CMD ["agent"]
