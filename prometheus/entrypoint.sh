#!/bin/sh
# Writes the proxy's scrape targets, one per worker (worker i serves admin on 8080 + i), from
# PROXY_WORKERS, then runs Prometheus. The backends need no list: DNS service discovery of
# `backend` (prometheus.yml) finds every replica, so `--scale backend=N` needs no edit.
set -eu
workers="${PROXY_WORKERS:-1}"
case "$workers" in ''|*[!0-9]*) echo "prometheus-lab: PROXY_WORKERS=$workers is not a number" >&2; exit 2;; esac
host="${PROXY_ADMIN_HOST:-proxy}"
base="${PROXY_ADMIN_PORT_IN_CONTAINER:-8080}"
targets=""
i=0
while [ "$i" -lt "$workers" ]; do
    targets="$targets${targets:+, }\"$host:$((base + i))\""
    i=$((i + 1))
done
printf '[{"targets": [%s], "labels": {"service": "proxy"}}]\n' "$targets" > /var/lib/prometheus/proxy-targets.json
echo "prometheus-lab: proxy targets: $targets; backend replicas: DNS A records of 'backend'" >&2
exec /usr/bin/prometheus \
    --config.file=/etc/prometheus/prometheus.yml \
    --storage.tsdb.path=/var/lib/prometheus/metrics2 \
    --storage.tsdb.retention.time="${PROMETHEUS_RETENTION:-2h}" \
    --web.listen-address=0.0.0.0:9090 \
    "$@"
