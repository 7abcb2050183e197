# Vault Agent keeping the Teletracker bearer token in a file for an app.
# The engine's token read carries ttl and rotation_period, so Agent re-reads
# right after each rotation and rewrites the file.
#
# Run it from a directory holding vault-token (a Vault token with the app
# policy) and teletracker-token.ctmpl:
#   VAULT_ADDR=http://127.0.0.1:8200 vault agent -config=agent.hcl

auto_auth {
  method "token_file" {
    config = {
      token_file_path = "./vault-token"
    }
  }
}

template_config {
  exit_on_retry_failure = true
}

template {
  source      = "./teletracker-token.ctmpl"
  destination = "./teletracker-token"
  perms       = "0600"
}
