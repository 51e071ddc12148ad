# A stand-in for the public Prometheus image (prom/prometheus), for machines
# that cannot pull one: scripts/compose-local.sh (and so
# scripts/compose-e2e.sh) builds it for docker-compose.yml's `monitoring`
# profile from a Debian base with Debian's prometheus package (2.42 in
# Debian 12) made offline by mmdebstrap (PREFIX-monitoring-base:SUITE). It
# behaves like the public image as docker-compose.yml uses it: the entrypoint
# is `prometheus` (on PATH in both), the compose file gives every flag, and
# it runs as nobody with its data in /prometheus.
ARG BASE=lobby-relay-test-monitoring-base:bookworm
FROM ${BASE}
RUN mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
