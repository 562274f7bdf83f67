# pgshift built from this repository on Debian 12.
#   docker build -t pgshift .
#   docker run -v $PWD/docker/pgshift.ini:/etc/pgshift/pgshift.ini ... pgshift
# docker-compose.yml runs it between two PostgreSQL 15 servers.
FROM debian:12

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential pkg-config \
        libuv1-dev libpq-dev libssl-dev libpg-query-dev \
        postgresql-client-15 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pgshift
COPY . .
RUN make -j"$(nproc)"

COPY docker/pgshift.ini /etc/pgshift/pgshift.ini
COPY docker/userlist.txt /etc/pgshift/userlist.txt
COPY docker/entrypoint.sh /usr/local/bin/pgshift-entrypoint
RUN chmod 0755 /usr/local/bin/pgshift-entrypoint \
 && chmod 0600 /etc/pgshift/userlist.txt \
 && useradd --system --no-create-home --shell /usr/sbin/nologin pgshift \
 && chown pgshift /etc/pgshift/userlist.txt

USER pgshift
EXPOSE 6432 6433 9930
ENTRYPOINT ["/usr/local/bin/pgshift-entrypoint"]
CMD ["./pgshift", "-c", "/etc/pgshift/pgshift.ini"]
