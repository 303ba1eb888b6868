# PostgreSQL from Debian's own package (15, bookworm) on the locally made Debian base: the database where the
# official postgres:16 image cannot be pulled. Used by docker-compose.offline.yml. The same interface as the
# official image: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB make the cluster and database on first start in
# PGDATA (/var/lib/postgresql/data, a volume); PGPORT sets the port for the server and for pg_isready.
# Data made by postgres:16 does not open here (nor the reverse): keep a site on one of the two.
#   docker build --network host -f deploy/docker/postgres.Dockerfile -t local/postgres:15-bookworm deploy/docker
ARG BASE_IMAGE=local/bookworm-python:3.11
FROM ${BASE_IMAGE}

# postgresql-common first, told not to make its own "main" cluster: the entrypoint makes one in PGDATA.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
