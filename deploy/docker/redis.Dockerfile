# Redis from Debian's own package on the locally made Debian base: the broker where the official redis:7 image
# cannot be pulled. Used by docker-compose.offline.yml; behaves like redis:7 for the fleet (no persistence needed:
# committed instances live in PostgreSQL and the spool, and the listener's outbox sweeper re-enqueues what a lost
# broker forgot).
#   docker build --network host -f deploy/docker/redis.Dockerfile -t local/redis:7-bookworm deploy/docker
ARG BASE_IMAGE=local/bookworm-python:3.11
FROM ${BASE_IMAGE}

# apt reaches the Debian mirror the base was made from (build with --network host where there is no bridge).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data

USER redis
WORKDIR /data
EXPOSE 6379
# As the official image: listen on every interface of the container, unprotected (only the fleet's network reaches
# it). A compose `command:` replaces all of this (docker-compose.offline.yml binds loopback on its own port).
CMD ["redis-server", "--bind", "0.0.0.0", "-::*", "--protected-mode", "no", "--dir", "/data"]
