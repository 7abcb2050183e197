# The policy for apps: read the Teletracker bearer token, nothing else.
# Install it with:  vault policy write teletracker-app examples/app-policy.hcl
path "teletracker/token" {
  capabilities = ["read"]
}
