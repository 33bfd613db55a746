#!/usr/bin/env bash
# One RabbitMQ user per kind of flotilla service, with the least it needs
# (prefix `flotilla`, vhost given as $1, default `/`). Passwords come from the
# environment; put them into the services' FLOTILLA_AMQP_URL.
#
#   FLOTILLA_SCHEDULER_AMQP_PASSWORD=… FLOTILLA_WORKER_AMQP_PASSWORD=… deploy/rabbitmq/users.sh /
#
# Both kinds declare the whole topology on connect (configure on the prefix).
#   scheduler: publishes jobs, parks and pumps reports; reads only reports.
#   worker:    publishes the jobs it derives (polls, next pages), delayed
#              jobs and reports; reads only work and delay queues, so it
#              cannot consume (steal) reports.
# Binding a queue needs write on it and read on its exchange; publishing via
# the default exchange needs write on amq.default. `broker::topology::permissions`
# is the source; a unit test keeps this file equal to it, and
# tests/trust_e2e.rs runs a whole campaign with these users.
set -euo pipefail
vhost="${1:-/}"
: "${FLOTILLA_SCHEDULER_AMQP_PASSWORD:?set it}" "${FLOTILLA_WORKER_AMQP_PASSWORD:?set it}"

# Idempotent: an existing user gets the password given.
user() {
  rabbitmqctl add_user "$1" "$2" 2>/dev/null || rabbitmqctl change_password "$1" "$2"
}

user flotilla-scheduler "$FLOTILLA_SCHEDULER_AMQP_PASSWORD"
rabbitmqctl set_permissions -p "$vhost" flotilla-scheduler \
  '^flotilla\..*' \
  '^amq\.default$|^flotilla\.(jobs|jobs\.bulk|jobs\.urgent|dead-letter|reports|delayed\.[0-9]+s\.reports)$' \
  '^flotilla\.(jobs|dead-letter|reports|delayed\.[0-9]+s\.reports)$'

user flotilla-worker "$FLOTILLA_WORKER_AMQP_PASSWORD"
rabbitmqctl set_permissions -p "$vhost" flotilla-worker \
  '^flotilla\..*' \
  '^amq\.default$|^flotilla\.(jobs|jobs\.bulk|jobs\.urgent|dead-letter|reports|delayed\.[0-9]+s\.(bulk|urgent))$' \
  '^flotilla\.(jobs|jobs\.bulk|jobs\.urgent|dead-letter|delayed\.[0-9]+s\.(bulk|urgent))$'

# The guest user only connects from localhost; delete it on a shared broker.
