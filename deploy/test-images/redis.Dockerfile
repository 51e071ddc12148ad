# A stand-in for the public Redis image (redis:7-alpine), for machines that
# cannot pull one: scripts/compose-local.sh (and so scripts/compose-e2e.sh)
# builds it from a Debian base with redis-server made offline by mmdebstrap.
# Like the public image it runs as
# the redis user in /data, a volume (so that the test sees `down -v` remove
# an anonymous volume, as it must with the public image). docker-compose.yml
# gives the command explicitly, so that it means the same in both images; the
# CMD here is that command, for `docker run`.
ARG BASE=lobby-relay-test-base:bookworm
FROM ${BASE}
RUN mkdir /data && chown redis:redis /data
VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
