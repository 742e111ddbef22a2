# A RabbitMQ image from Debian 12's rabbitmq-server, for the chart's quickstart broker
# (rabbitmq.deploy=true) where Docker Hub's `rabbitmq` image cannot be pulled. It behaves like the
# official image where the chart relies on it:
#   - runs as UID/GID 999 (user `rabbitmq`), home and data in /var/lib/rabbitmq;
#   - reads /etc/rabbitmq/rabbitmq.conf and /etc/rabbitmq/enabled_plugins (the chart mounts both);
#   - logs to stdout; RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS create the first user;
#   - `rabbitmq-diagnostics` and the other CLI tools on PATH.
#
#   scripts/testenv images rabbitmq      (as trailingstop.local/rabbitmq:3.10-bookworm)
ARG BASE=trailingstop.local/debian:bookworm-minbase
FROM ${BASE}
# The package's init script must not start a broker during the build (policy-rc.d), and the
# package's user gets the official image's UID first.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 rabbitmq \
 && useradd --system --uid 999 --gid 999 --home-dir /var/lib/rabbitmq --no-create-home \
      --shell /usr/sbin/nologin rabbitmq \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /var/lib/rabbitmq/* /var/log/rabbitmq/* \
 && install -d -o rabbitmq -g rabbitmq -m 0750 /var/lib/rabbitmq /var/log/rabbitmq
ENV HOME=/var/lib/rabbitmq \
    PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RABBITMQ_LOGS=- \
    LANG=C.UTF-8
COPY rabbitmq-entrypoint.sh /usr/local/bin/rabbitmq-entrypoint.sh
USER 999:999
WORKDIR /var/lib/rabbitmq
EXPOSE 5672 15672 15692
ENTRYPOINT ["/usr/local/bin/rabbitmq-entrypoint.sh"]
CMD ["rabbitmq-server"]
