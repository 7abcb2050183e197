# The policy for Prometheus: read each mount's metrics, nothing else (not the
# token, not status). One block per mount that prometheus.yml scrapes.
# Install it with:  vault policy write teletracker-metrics examples/prometheus/metrics-policy.hcl
path "teletracker/metrics" {
  capabilities = ["read"]
}

path "teletracker-eu/metrics" {
  capabilities = ["read"]
}
