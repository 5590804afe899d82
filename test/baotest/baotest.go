// Package baotest runs real Vault-API servers (OpenBao, or Vault) for tests,
// benchmarks and the demo: never an emulator.
//
// A test binary shares one dev server (`bao server -dev -dev-tls` on a free
// loopback port, its TLS files in a temporary directory): its TestMain calls
// Main, and each test asks Shared for it and names its own mounts with
// Unique, so tests neither collide nor care what an earlier run left. With
// HALLMARK_TEST_VAULT_ADDR (and HALLMARK_TEST_VAULT_TOKEN, a root token, and
// HALLMARK_TEST_VAULT_CACERT) set, tests use that server instead, which
// reruns against one server.
//
// Tests that stop, restart or seal Vault start a private one with
// StartPersistent: file storage in a temporary directory, a TLS listener
// with a CA made here, initialized with one unseal key that stays in
// memory.
//
// The binary is `bao` (or `vault`) on PATH; `make tools`
// (test/scripts/install-openbao.sh) puts one in .tools/bin, which is tried
// too. Without one, the tests that need it fail saying so; they are never
// skipped.
package baotest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// Environment variables naming an existing server for tests.
const (
	AddrEnv   = "HALLMARK_TEST_VAULT_ADDR"
	TokenEnv  = "HALLMARK_TEST_VAULT_TOKEN"
	CACertEnv = "HALLMARK_TEST_VAULT_CACERT"
)

const installHint = "run `make tools` (test/scripts/install-openbao.sh), or put `bao` or `vault` on PATH, or set " + AddrEnv

// Server is a running Vault-API server.
type Server struct {
	// Addr is its base URL, https://127.0.0.1:PORT.
	Addr string
	// CACertFile verifies its TLS certificate.
	CACertFile string
	// RootToken may do anything.
	RootToken string
	// Product is "OpenBao" or "Vault"; Version its version, "v2.6.2".
	Product, Version string
	// Bin is the server binary, and the CLI the setup script runs.
	Bin string

	dir       string // owned temporary directory; empty for an external server
	unsealKey string // persistent servers only
	config    string // persistent servers: the config file
	port      int

	mu   sync.Mutex
	proc *exec.Cmd
	done chan struct{}
	logf *os.File
}

// String names the server: "OpenBao v2.6.2 at https://127.0.0.1:PORT".
func (s *Server) String() string {
	return fmt.Sprintf("%s %s at %s", s.Product, s.Version, s.Addr)
}

// LogPath is the server's own log.
func (s *Server) LogPath() string {
	if s.dir == "" {
		return ""
	}
	return filepath.Join(s.dir, "server.log")
}

// Bin finds the server binary: bao, then vault, on PATH, then
// .tools/bin/bao of the repository around the working directory.
func Bin() (string, error) {
	for _, name := range []string{"bao", "vault"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				p := filepath.Join(d, ".tools", "bin", "bao")
				if _, err := os.Stat(p); err == nil {
					return p, nil
				}
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("baotest: no Vault-API server binary: " + installHint)
}

// StartDev starts `bao server -dev -dev-tls` on a free loopback port with
// its TLS files in a new temporary directory.
func StartDev(ctx context.Context) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	var last error
	for range 5 { // the cluster port (PORT+1) may be taken: try another
		s, err := newServer(bin, "hallmark-bao-dev-")
		if err != nil {
			return nil, err
		}
		s.RootToken = "root-" + randomHex(8)
		certDir := filepath.Join(s.dir, "tls")
		if err := os.Mkdir(certDir, 0o700); err != nil {
			return nil, fmt.Errorf("baotest: %w", err)
		}
		s.CACertFile = filepath.Join(certDir, "vault-ca.pem")
		err = s.launch(ctx, "server", "-dev", "-dev-tls", "-dev-no-store-token",
			"-dev-root-token-id="+s.RootToken, "-dev-tls-cert-dir="+certDir,
			"-dev-listen-address="+hostPort(s.port))
		if err == nil {
			return s, nil
		}
		last = err
		s.Stop()
	}
	return nil, last
}

// StartPersistent starts a server with file storage and its own TLS
// certificate, initializes it with a single unseal key and unseals it.
// Unlike a dev server it keeps its data across Restart and can be sealed
// and unsealed.
func StartPersistent(ctx context.Context) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	var last error
	for range 5 {
		s, err := newServer(bin, "hallmark-bao-")
		if err != nil {
			return nil, err
		}
		if err := s.writeConfig(); err != nil {
			s.Stop()
			return nil, err
		}
		if err = s.launch(ctx, "server", "-config="+s.config); err == nil {
			if err = s.initialize(ctx); err == nil {
				return s, nil
			}
		}
		last = err
		s.Stop()
	}
	return nil, last
}

func newServer(bin, prefix string) (*Server, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("baotest: %w", err)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{Bin: bin, dir: dir, port: port, Addr: "https://" + hostPort(port)}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("baotest: %s version: %w", bin, err)
	}
	// "OpenBao v2.6.2 (dd9c19c3...), committed ..." or "Vault v1.x.y (...)".
	if f := strings.Fields(string(out)); len(f) >= 2 {
		s.Product, s.Version = f[0], f[1]
	}
	return s, nil
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("baotest: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// launch starts the binary with args and waits until the server answers
// sys/seal-status over TLS.
func (s *Server) launch(ctx context.Context, args ...string) error {
	logf, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	cmd := exec.Command(s.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Settings come from the arguments and the config file only.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + s.dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("baotest: start %s: %w", s.Bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }() //nolint:errcheck // the exit is reported by waitUp
	s.mu.Lock()
	s.proc, s.done, s.logf = cmd, done, logf
	s.mu.Unlock()
	return s.waitUp(ctx, done)
}

func (s *Server) waitUp(ctx context.Context, done chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("baotest: %s exited at start; its log %s ends:\n%s", s.Bin, s.LogPath(), tail(s.LogPath(), 15))
		default:
		}
		if s.CACertFile != "" {
			if _, err := os.Stat(s.CACertFile); err == nil {
				if _, err := s.SealStatus(ctx); err == nil {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("baotest: %s did not answer within 60s; see %s", s.Bin, s.LogPath())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// SealStatus is sys/seal-status (no token needed).
type SealStatus struct {
	Sealed      bool   `json:"sealed"`
	Initialized bool   `json:"initialized"`
	Version     string `json:"version"`
}

// SealStatus asks the server whether it is sealed.
func (s *Server) SealStatus(ctx context.Context) (SealStatus, error) {
	c, err := s.client("")
	if err != nil {
		return SealStatus{}, err
	}
	st, err := c.Sys().SealStatusWithContext(ctx)
	if err != nil {
		return SealStatus{}, err
	}
	return SealStatus{Sealed: st.Sealed, Initialized: st.Initialized, Version: st.Version}, nil
}

// Client is an API client with the root token.
func (s *Server) Client() (*api.Client, error) { return s.client(s.RootToken) }

func (s *Server) client(token string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: s.CACertFile}); err != nil {
		return nil, fmt.Errorf("baotest: %w", err)
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("baotest: %w", err)
	}
	c.SetToken(token)
	return c, nil
}

// HTTPClient trusts the server's TLS certificate.
func (s *Server) HTTPClient() (*http.Client, error) {
	pemBytes, err := os.ReadFile(s.CACertFile)
	if err != nil {
		return nil, fmt.Errorf("baotest: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("baotest: %s holds no certificate", s.CACertFile)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}, Timeout: 30 * time.Second}, nil
}

// Env is the environment the vault/bao CLI (and setup.sh) needs to talk to
// the server as root.
func (s *Server) Env() []string {
	return []string{"VAULT_ADDR=" + s.Addr, "VAULT_TOKEN=" + s.RootToken, "VAULT_CACERT=" + s.CACertFile, "VAULT_CLI=" + s.Bin}
}

// Stop ends the server process (a no-op for an external server) and
// removes its directory.
func (s *Server) Stop() {
	s.Kill()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// Kill ends the server process, keeping its data for Restart.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.proc, s.done
	s.proc = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) //nolint:errcheck // gone already is fine
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck
		<-done
	}
}

// Hang stops the server's processes (SIGSTOP) without closing anything:
// connections are accepted by the kernel and never answered, as by a
// server that hangs. The returned function resumes them (SIGCONT).
func (s *Server) Hang() (resume func()) {
	s.mu.Lock()
	cmd := s.proc
	s.mu.Unlock()
	if cmd == nil {
		return func() {}
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)                   //nolint:errcheck // gone already is fine
	return func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT) } //nolint:errcheck // as above
}

// Restart starts a persistent server again after Kill, on the same port
// with the same data, and unseals it.
func (s *Server) Restart(ctx context.Context) error {
	if s.config == "" {
		return errors.New("baotest: only a persistent server can be restarted (a dev server keeps nothing)")
	}
	if err := s.launch(ctx, "server", "-config="+s.config); err != nil {
		return err
	}
	return s.Unseal(ctx)
}

// Seal seals the server.
func (s *Server) Seal(ctx context.Context) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	return c.Sys().SealWithContext(ctx)
}

// Unseal unseals a persistent server with its unseal key.
func (s *Server) Unseal(ctx context.Context) error {
	if s.unsealKey == "" {
		return errors.New("baotest: no unseal key (not a persistent server)")
	}
	c, err := s.client("")
	if err != nil {
		return err
	}
	st, err := c.Sys().UnsealWithContext(ctx, s.unsealKey)
	if err != nil {
		return fmt.Errorf("baotest: unseal: %w", err)
	}
	if st.Sealed {
		return errors.New("baotest: still sealed after the unseal key")
	}
	return nil
}

func (s *Server) writeConfig() error {
	tlsDir := filepath.Join(s.dir, "tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	if err := writeTLS(tlsDir); err != nil {
		return err
	}
	s.CACertFile = filepath.Join(tlsDir, "ca.pem")
	cluster, err := freePort()
	if err != nil {
		return err
	}
	s.config = filepath.Join(s.dir, "server.hcl")
	cfg := fmt.Sprintf(`storage "file" {
  path = %q
}
listener "tcp" {
  address         = %q
  cluster_address = %q
  tls_cert_file   = %q
  tls_key_file    = %q
}
api_addr     = %q
cluster_addr = "https://%s"
disable_mlock = true
`, filepath.Join(s.dir, "data"), hostPort(s.port), hostPort(cluster),
		filepath.Join(tlsDir, "server.pem"), filepath.Join(tlsDir, "server-key.pem"), s.Addr, hostPort(cluster))
	return os.WriteFile(s.config, []byte(cfg), 0o600)
}

// initialize runs sys/init with one key share and unseals.
func (s *Server) initialize(ctx context.Context) error {
	c, err := s.client("")
	if err != nil {
		return err
	}
	resp, err := c.Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		return fmt.Errorf("baotest: init: %w", err)
	}
	if len(resp.KeysB64) != 1 {
		return fmt.Errorf("baotest: init gave %d unseal keys, want 1", len(resp.KeysB64))
	}
	s.unsealKey, s.RootToken = resp.KeysB64[0], resp.RootToken
	return s.Unseal(ctx)
}

// writeTLS makes a CA and a server certificate for 127.0.0.1 in dir:
// ca.pem, server.pem, server-key.pem (the key only the server reads).
func writeTLS(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "baotest CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(7 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(7 * 24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("baotest: %w", err)
	}
	files := []struct {
		name, typ string
		der       []byte
	}{
		{"ca.pem", "CERTIFICATE", caDER},
		{"server.pem", "CERTIFICATE", der},
		{"server-key.pem", "EC PRIVATE KEY", keyDER},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return fmt.Errorf("baotest: %w", err)
		}
	}
	return nil
}

var (
	sharedMu  sync.Mutex
	shared    *Server
	sharedErr error
)

// Shared is the test binary's server: the one HALLMARK_TEST_VAULT_ADDR
// names, or a dev server started on first use and stopped by Main.
func Shared(ctx context.Context) (*Server, error) {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil || sharedErr != nil {
		return shared, sharedErr
	}
	if addr := os.Getenv(AddrEnv); addr != "" {
		shared, sharedErr = external(ctx, addr)
	} else {
		shared, sharedErr = StartDev(ctx)
	}
	return shared, sharedErr
}

// external describes the server at addr from the environment.
func external(ctx context.Context, addr string) (*Server, error) {
	s := &Server{Addr: strings.TrimRight(addr, "/"), RootToken: os.Getenv(TokenEnv), CACertFile: os.Getenv(CACertEnv)}
	if s.RootToken == "" || s.CACertFile == "" {
		return nil, fmt.Errorf("baotest: %s needs %s (a root token) and %s (its TLS CA)", AddrEnv, TokenEnv, CACertEnv)
	}
	bin, err := Bin() // the CLI for the setup script
	if err != nil {
		return nil, err
	}
	s.Bin = bin
	c, err := s.client("")
	if err != nil {
		return nil, err
	}
	// seal-status says which product: OpenBao reports commit_date,
	// Vault build_date.
	r := c.NewRequest(http.MethodGet, "/v1/sys/seal-status")
	resp, err := c.RawRequestWithContext(ctx, r) //nolint:staticcheck // the raw answer names the product
	if err != nil {
		return nil, fmt.Errorf("baotest: %s: %w", addr, err)
	}
	defer resp.Body.Close()
	var st struct {
		Version    string `json:"version"`
		CommitDate string `json:"commit_date"`
	}
	if err := resp.DecodeJSON(&st); err != nil {
		return nil, fmt.Errorf("baotest: %s seal-status: %w", addr, err)
	}
	s.Product, s.Version = "Vault", "v"+st.Version
	if st.CommitDate != "" {
		s.Product = "OpenBao"
	}
	return s, nil
}

// Main runs the tests and stops the shared dev server, if one was started.
func Main(m *testing.M) int {
	code := m.Run()
	sharedMu.Lock()
	if shared != nil {
		shared.Stop()
	}
	sharedMu.Unlock()
	return code
}

var (
	runID   = randomHex(3)
	counter atomic.Uint64
)

// Unique is prefix with this process's random run ID and a counter, for
// mount, policy and role names that no other test or earlier run uses.
func Unique(prefix string) string {
	return fmt.Sprintf("%s-%s-%d", prefix, runID, counter.Add(1))
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
