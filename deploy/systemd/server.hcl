# /etc/hallmark/server.hcl for hallmark-server.service; reference:
# docs/configuration.md. `hallmark-server validate --config` checks it.
server {
  trust_domain        = "example.org"
  listen_address      = "0.0.0.0:8443"                            # agents, gRPC over SVID mTLS
  health_address      = "127.0.0.1:8080"                          # /healthz /readyz /metrics /trust /log
  data_dir            = "/var/lib/hallmark-server"                # StateDirectory=hallmark-server
  workload_api_socket = "unix:///run/spire/agent-sockets/api.sock"
  certificate_ttl     = "5m"
  # Signing-CA rotation (docs/rotation.md): RuntimeDirectory=hallmark-server.
  # Run `sudo -u hallmark hallmark admin ...`: the unprivileged server cannot
  # identify other users' processes, root's included.
  admin_socket        = "/run/hallmark-server/admin.sock"
}

# For trying it out; production uses key_manager "vault" (plugins/keymanager/vault).
key_manager "local" {}

# Pushed to every agent without a policy of its own.
policy {
  rule "builders" {
    spiffe_ids      = ["spiffe://example.org/ci/builder"]
    steps           = ["build", "test"]
    workspace_roots = ["/home/runner/work"]
  }
}
