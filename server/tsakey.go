package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/hallmark-dev/hallmark/attest/tsa"
)

// The server is its log's RFC 3161 timestamp authority (attest/tsa). Its
// key and certificate chain live in data_dir/log/tsa.pem, mode 0600: a
// "PRIVATE KEY" block (ECDSA P-256, PKCS #8), then the leaf and root
// certificates. Like the log key, it is made once, with the log, and a
// log whose timestamp key is lost cannot go on: the published trusted
// root names this chain.
const tsaKeyFile = "tsa.pem"

// tsaKeyPath is where the timestamp key of a data directory lives.
func tsaKeyPath(dataDir string) string { return filepath.Join(dataDir, logKeyDir, tsaKeyFile) }

// errNoTSAKey: the timestamp key file is absent.
var errNoTSAKey = errors.New("no timestamp authority key")

// loadTSA reads the timestamp authority at path. When it is absent and
// create is set, it makes one named after origin; otherwise the error
// wraps errNoTSAKey.
func loadTSA(path, origin string, create bool, now time.Time) (*tsa.Signer, error) {
	s, err := readTSA(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return nil, fmt.Errorf("%w at %s", errNoTSAKey, path)
		}
		return createTSA(path, origin, now)
	}
	return s, err
}

func readTSA(path string) (*tsa.Signer, error) {
	data, _, err := readPrivate(path, "timestamp key")
	if err != nil {
		return nil, err
	}
	var key *ecdsa.PrivateKey
	var chain []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case logKeyPEMType:
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("timestamp key %s: %w", path, err)
			}
			var ok bool
			if key, ok = k.(*ecdsa.PrivateKey); !ok {
				return nil, fmt.Errorf("timestamp key %s: %T, want an ECDSA key", path, k)
			}
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("timestamp key %s: certificate: %w", path, err)
			}
			chain = append(chain, c)
		}
	}
	if key == nil {
		return nil, fmt.Errorf("timestamp key %s: no %s block", path, logKeyPEMType)
	}
	s, err := tsa.NewSigner(key, chain)
	if err != nil {
		return nil, fmt.Errorf("timestamp key %s: %w", path, err)
	}
	return s, nil
}

func createTSA(path, origin string, now time.Time) (*tsa.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate timestamp key: %w", err)
	}
	// Backdated a minute, like the log key's validity, so that a clock a
	// little behind still accepts the first timestamps.
	chain, err := tsa.NewChain(key, origin+" timestamp authority", now.Add(-time.Minute).UTC().Truncate(time.Second))
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode timestamp key: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: logKeyPEMType, Bytes: der})
	for _, c := range chain {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := createExclusive(path, data); err != nil {
		return nil, fmt.Errorf("timestamp key: %w", err)
	}
	return tsa.NewSigner(key, chain)
}
