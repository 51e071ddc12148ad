# A stand-in for the public HAProxy image (haproxy:2.8), for machines that
# cannot pull one: scripts/compose-local.sh (and so scripts/compose-e2e.sh)
# builds it from a Debian base with Debian's haproxy (2.6 in Debian 12) made
# offline by mmdebstrap. It behaves
# like the public image as docker-compose.yml uses it: the configuration is
# mounted at /usr/local/etc/haproxy/haproxy.cfg; the default command is what
# the public image's entrypoint runs for its default command (master-worker,
# foreground, logs on stdout); it runs as the haproxy user in
# /var/lib/haproxy; it stops softly on SIGUSR1.
ARG BASE=lobby-relay-test-base:bookworm
FROM ${BASE}
USER haproxy
WORKDIR /var/lib/haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
