package server

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/hallmark-dev/hallmark/internal/privdir"
)

// The log key lives in data_dir/log/key: an Ed25519 key as PKCS #8 PEM
// whose "Created" header is when it was made (the start of the log key's
// validity in the trusted root).
const (
	logKeyDir       = "log"
	logKeyFile      = "key"
	logKeyPEMType   = "PRIVATE KEY"
	logKeyCreatedAt = "Created"
)

// logKey is the transparency log's signing key.
type logKey struct {
	priv    ed25519.PrivateKey
	created time.Time
}

func (k logKey) public() ed25519.PublicKey { return k.priv.Public().(ed25519.PublicKey) }

// logKeyPath is where the log key of a data directory lives.
func logKeyPath(dataDir string) string { return filepath.Join(dataDir, logKeyDir, logKeyFile) }

// errNoLogKey: the key file is absent.
var errNoLogKey = errors.New("no log key")

// loadLogKey reads the log key at path. When it is absent and create is
// set, it makes one (directory 0700, file 0600); otherwise the error wraps
// errNoLogKey.
func loadLogKey(path string, create bool, now time.Time) (logKey, error) {
	k, err := readLogKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return logKey{}, fmt.Errorf("%w at %s", errNoLogKey, path)
		}
		return createLogKey(path, now)
	}
	return k, err
}

func readLogKey(path string) (logKey, error) {
	data, info, err := readPrivate(path, "log key")
	if err != nil {
		return logKey{}, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != logKeyPEMType {
		return logKey{}, fmt.Errorf("log key %s: no %s PEM block", path, logKeyPEMType)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return logKey{}, fmt.Errorf("log key %s: %w", path, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return logKey{}, fmt.Errorf("log key %s: %T, want an Ed25519 key", path, key)
	}
	created := info.ModTime()
	if v, ok := block.Headers[logKeyCreatedAt]; ok {
		if created, err = time.Parse(time.RFC3339, v); err != nil {
			return logKey{}, fmt.Errorf("log key %s: %s header: %w", path, logKeyCreatedAt, err)
		}
	}
	return logKey{priv: priv, created: created.UTC().Truncate(time.Second)}, nil
}

// createLogKey writes a new key to path without ever replacing one.
func createLogKey(path string, now time.Time) (logKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return logKey{}, fmt.Errorf("generate log key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return logKey{}, fmt.Errorf("encode log key: %w", err)
	}
	created := now.UTC().Truncate(time.Second)
	data := pem.EncodeToMemory(&pem.Block{Type: logKeyPEMType, Headers: map[string]string{logKeyCreatedAt: created.Format(time.RFC3339)}, Bytes: der})
	if err := createExclusive(path, data); err != nil {
		return logKey{}, fmt.Errorf("log key: %w", err)
	}
	return logKey{priv: priv, created: created}, nil
}

// createExclusive writes data to path (mode 0600, its directory 0700)
// without ever replacing a file there: the data goes to a temporary file
// first, is synced, and is then linked into place.
func createExclusive(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restrict directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".new-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: make the new name durable
		d.Close()
	}
	return nil
}

// readPrivate reads a key file, refusing one another local user wrote or
// can read, or whose directory or any above it another user could rename
// entries in (privdir); what names it in the error. A missing file's
// error wraps fs.ErrNotExist.
func readPrivate(path, what string) ([]byte, fs.FileInfo, error) {
	if err := privdir.CheckAncestors(filepath.Dir(path), "put a "+what+" of their own in its place, and sign as this server's log"); err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	info, err := privdir.CheckFile(path, what)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(path)
	return data, info, err
}
