#!/usr/bin/env bash
# One RabbitMQ user per kind of flotilla service, with the least it needs
# (prefix `flotilla`, vhost given as $1, default `/`). Passwords come from the
# environment; put them into the services' FLOTILLA_AMQP_URL.
#
#   FLOTILLA_SETUP_AMQP_PASSWORD=… FLOTILLA_SCHEDULER_AMQP_PASSWORD=… \
#   FLOTILLA_WORKER_AMQP_PASSWORD=… deploy/rabbitmq/users.sh /
#
# Only the setup user declares the topology (configure on the prefix):
# `flotilla admin arm` runs with it once per deployment. The services check
# the topology passively and have no configure right: they cannot delete,
# redeclare or rebind a queue.
#   scheduler: publishes jobs, parks and pumps reports; reads reports and
#              the dead-letter queue.
#   worker:    publishes the jobs it derives (polls, next pages), delayed
#              jobs and reports; reads only work and delay queues, so it
#              cannot consume (steal) reports or dead letters.
# Publishing via the default exchange needs write on amq.default.
# `broker::topology::permissions` is the source; a unit test keeps this file
# equal to it, and tests/trust_e2e.rs runs a whole campaign with these users.
set -euo pipefail
vhost="${1:-/}"
: "${FLOTILLA_SCHEDULER_AMQP_PASSWORD:?set it}" "${FLOTILLA_WORKER_AMQP_PASSWORD:?set it}" "${FLOTILLA_SETUP_AMQP_PASSWORD:?set it}"

# Idempotent: an existing user gets the password given.
user() {
  rabbitmqctl add_user "$1" "$2" 2>/dev/null || rabbitmqctl change_password "$1" "$2"
}

user flotilla-setup "$FLOTILLA_SETUP_AMQP_PASSWORD"
rabbitmqctl set_permissions -p "$vhost" flotilla-setup \
  '^flotilla\..*' \
  '^flotilla\..*' \
  '^flotilla\..*'

user flotilla-scheduler "$FLOTILLA_SCHEDULER_AMQP_PASSWORD"
rabbitmqctl set_permissions -p "$vhost" flotilla-scheduler \
  '^$' \
  '^amq\.default$|^flotilla\.(jobs|reports|delayed\.[0-9]+s\.reports)$' \
  '^flotilla\.(dead-letter|reports|delayed\.[0-9]+s\.reports)$'

user flotilla-worker "$FLOTILLA_WORKER_AMQP_PASSWORD"
rabbitmqctl set_permissions -p "$vhost" flotilla-worker \
  '^$' \
  '^amq\.default$|^flotilla\.(jobs|reports|delayed\.[0-9]+s\.(bulk|urgent))$' \
  '^flotilla\.(jobs\.bulk|jobs\.urgent|delayed\.[0-9]+s\.(bulk|urgent))$'

# The guest user only connects from localhost; delete it on a shared broker.
