#!/bin/sh
# Writes rabbitmq.conf from the environment (the user producers and workers log in as; guest
# only works over loopback), then runs the broker in the foreground (exec: it gets SIGTERM).
set -eu
: "${RABBITMQ_DEFAULT_USER:?set RABBITMQ_DEFAULT_USER}"
: "${RABBITMQ_DEFAULT_PASS:?set RABBITMQ_DEFAULT_PASS}"
export RABBITMQ_CONFIG_FILE=/var/lib/rabbitmq/rabbitmq.conf
cat > "$RABBITMQ_CONFIG_FILE" <<CONF
default_user = $RABBITMQ_DEFAULT_USER
default_pass = $RABBITMQ_DEFAULT_PASS
listeners.tcp.default = 5672
prometheus.tcp.port = 15692
# Per-queue series (rabbitmq_queue_messages{queue=...}) for the dashboard's queue panels.
prometheus.return_per_object_metrics = true
CONF
exec rabbitmq-server
