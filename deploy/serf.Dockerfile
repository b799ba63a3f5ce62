# A Serf agent image. Debian bookworm packages serf 0.9.4; the ENTRYPOINT is the serf CLI.
# - docker-compose.yml builds it on debian:bookworm-slim (three agents for users).
# - `make test-docker` builds it on our own image (--build-arg BASE=serfbridge:local), so
#   the lab's agents in containers can run serfbridge's event handler (serfbridge-handle
#   and /usr/local/lib/serfbridge/serf-event-handler are in that image).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends serf \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/bin/serf"]
CMD ["agent"]
