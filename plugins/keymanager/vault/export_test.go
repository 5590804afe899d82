package vault

import "time"

// SetRequestTimeout sets c's bound on each request to Vault.
func SetRequestTimeout(c *Config, d time.Duration) { c.requestTimeout = d }
