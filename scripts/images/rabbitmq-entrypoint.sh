#!/bin/sh
# Entry point of the Debian-based RabbitMQ image (rabbitmq.Dockerfile): like the official image,
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS become the broker's first user. They go into a
# config file of their own under /tmp (the chart mounts /etc/rabbitmq read-only), added to the
# main /etc/rabbitmq/rabbitmq.conf through RABBITMQ_CONFIG_FILES; then the command runs.
set -eu
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] || [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
  dir="${TMPDIR:-/tmp}/rabbitmq-conf.d"
  mkdir -p "$dir"
  (
    umask 077
    {
      [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || printf 'default_user = %s\n' "$RABBITMQ_DEFAULT_USER"
      [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || printf 'default_pass = %s\n' "$RABBITMQ_DEFAULT_PASS"
    } > "$dir/10-default-user.conf"
  )
  export RABBITMQ_CONFIG_FILES="$dir"
fi
exec "$@"
