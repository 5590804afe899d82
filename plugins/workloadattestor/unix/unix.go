// Package unix is the "unix" workload attestor: it describes a local caller
// with selectors like SPIRE's unix attestor: uid, gid, user, group,
// executable path and, within a size limit, the executable's sha256.
package unix

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/hcl/v2"

	"github.com/hallmark-dev/hallmark/internal/config"
	"github.com/hallmark-dev/hallmark/internal/exedigest"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor"
)

// DefaultMaxHashBytes bounds how much of an executable is hashed.
const DefaultMaxHashBytes = 256 << 20

// Config is the workload_attestor "unix" block.
type Config struct {
	// HashExecutable adds unix:sha256 (off by default: it reads the
	// whole executable on every call, except where its digest can be
	// remembered; see internal/exedigest).
	HashExecutable bool `hcl:"hash_executable,optional"`
	// MaxHashBytes skips hashing executables larger than this.
	MaxHashBytes int64 `hcl:"max_hash_bytes,optional"`
}

// ParseConfig decodes the plugin block; unknown keys are errors.
func ParseConfig(body hcl.Body) (Config, error) {
	var c Config
	if err := config.DecodeBlock(body, &c); err != nil {
		return Config{}, fmt.Errorf("unix: %w", err)
	}
	if c.MaxHashBytes == 0 {
		c.MaxHashBytes = DefaultMaxHashBytes
	}
	if c.MaxHashBytes < 0 {
		return Config{}, fmt.Errorf("unix: max_hash_bytes must be positive")
	}
	return c, nil
}

// Attestor is the unix workload attestor.
type Attestor struct {
	cfg     Config
	digests *exedigest.Cache
	proc    string // /proc, replaceable in tests
}

// New returns an attestor; digests remembers executables' digests (nil:
// hash every time).
func New(cfg Config, digests *exedigest.Cache) *Attestor {
	if cfg.MaxHashBytes == 0 {
		cfg.MaxHashBytes = DefaultMaxHashBytes
	}
	return &Attestor{cfg: cfg, digests: digests, proc: "/proc"}
}

// Attest returns unix:uid, unix:gid, unix:user and unix:group (when the
// names resolve), unix:path (the executable, when that path names it on
// this host: workloadattestor.HostPath) and, when configured,
// unix:sha256.
func (a *Attestor) Attest(ctx context.Context, c workloadattestor.Caller) (workloadattestor.Result, error) {
	var sel []string
	for _, s := range c.IDSelectors() {
		sel = append(sel, "unix:"+s)
	}
	exeLink := fmt.Sprintf("%s/%d/exe", a.proc, c.PID)
	path, err := os.Readlink(exeLink)
	if err != nil {
		return workloadattestor.Result{}, fmt.Errorf("unix: executable of pid %d: %w", c.PID, err)
	}
	exe, err := os.Stat(exeLink) // the file itself, not the link
	if err != nil {
		return workloadattestor.Result{}, fmt.Errorf("unix: executable of pid %d: %w", c.PID, err)
	}
	if workloadattestor.HostPath(path, exe) {
		sel = append(sel, "unix:path:"+path)
	}
	if a.cfg.HashExecutable {
		sum, err := a.hashExe(ctx, exeLink)
		if err != nil {
			return workloadattestor.Result{}, fmt.Errorf("unix: pid %d: %w", c.PID, err)
		}
		if sum != "" {
			sel = append(sel, "unix:sha256:"+sum)
		}
	}
	return workloadattestor.Result{Selectors: sel}, nil
}

// hashExe hashes the executable through /proc/PID/exe, which names the
// file the process runs even if its path was replaced since; "" when it is
// larger than max_hash_bytes.
func (a *Attestor) hashExe(ctx context.Context, exeLink string) (string, error) {
	f, err := os.Open(exeLink)
	if err != nil {
		return "", fmt.Errorf("open executable: %w", err)
	}
	defer f.Close()
	sum, err := a.digests.Sum(ctx, f, a.cfg.MaxHashBytes)
	if err != nil {
		return "", fmt.Errorf("hash executable: %w", err)
	}
	return sum, nil
}
