# One policy for many apps, each with its own named account: an entity reads
# the token of the account its metadata names, and no other.
#
#   vault policy write teletracker-accounts examples/account-policy.hcl
#   vault write identity/entity name=app-a policies=teletracker-accounts \
#     metadata=teletracker_account=fleet-7
#   (and an entity alias tying app-a's login to that entity)
#
# An entity without the metadata gets no path at all.
path "teletracker/token/{{identity.entity.metadata.teletracker_account}}" {
  capabilities = ["read"]
}
