# /etc/hallmark/agent.hcl for hallmark-agent.service; reference:
# docs/configuration.md. `hallmark-agent validate --config` checks it.
agent {
  server_address      = "hallmark.internal:8443"
  server_spiffe_id    = "spiffe://example.org/hallmark/server"
  workload_api_socket = "unix:///run/spire/agent-sockets/api.sock"
  health_address      = "127.0.0.1:8081"
  socket_path         = "/run/hallmark/agent.sock"                # RuntimeDirectory=hallmark
  socket_mode         = "0660"
  socket_group        = "ci"                                      # the unit's Group=; build steps run in it
  data_dir            = "/var/lib/hallmark-agent"                 # StateDirectory=hallmark-agent
}

workload_attestor "unix" {}
workload_attestor "spire" {
  admin_socket = "unix:///run/spire/admin/api.sock"
}
# No policy block: the agent follows the policy hallmark-server holds.
