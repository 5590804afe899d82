package server

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/internal/privdir"
)

// A local user who can rename entries of a directory above the server's
// data_dir moves the log's directory aside and puts a key of their own in
// its place: the server would then sign checkpoints and timestamps with a
// key the attacker holds. The server refuses the key while that user
// could do it, and refuses the planted key even once the directory is
// closed again.
func TestLogKeyOthersCouldReplaceIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the attacker is another uid")
	}
	const attacker = 4017
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} { // for the attacker to reach srv
		require.NoError(t, os.Chmod(d, 0o755))
	}
	shared := filepath.Join(base, "srv")
	require.NoError(t, os.Mkdir(shared, 0o777))
	require.NoError(t, os.Chmod(shared, 0o777)) // a careless mkdir -m 777, no sticky bit
	dataDir := filepath.Join(shared, "hallmark-server")
	keyPath := logKeyPath(dataDir)
	now := time.Date(2026, 12, 8, 3, 0, 0, 0, time.UTC)

	_, err := loadLogKey(keyPath, true, now)
	require.ErrorIs(t, err, privdir.ErrNotPrivate, "no key is made where others could replace it")
	require.ErrorContains(t, err, shared+" is writable by others")
	_, statErr := os.Stat(keyPath)
	require.ErrorIs(t, statErr, os.ErrNotExist)

	// Made while the directory was closed; opened again later.
	require.NoError(t, os.Chmod(shared, 0o755))
	genuine, err := loadLogKey(keyPath, true, now)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(shared, 0o777))
	_, err = loadLogKey(keyPath, false, now)
	require.ErrorIs(t, err, privdir.ErrNotPrivate)

	// The attacker, as their own uid, swaps in a key they made.
	_, theirs, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	staged := filepath.Join(base, "staged.pem")
	require.NoError(t, writeLogKeyPEM(staged, theirs, now))
	require.NoError(t, os.Chown(staged, attacker, attacker))
	swap := exec.Command("sh", "-ec", `umask 077
mv "$1" "$1.old"
mkdir -p "$(dirname "$2")"
cp "$3" "$2"`, "sh", dataDir, keyPath, staged)
	swap.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attacker, Gid: attacker}}
	out, err := swap.CombinedOutput()
	require.NoError(t, err, "the attacker's swap: %s", out)

	// The operator closes the directory again; the planted key stays.
	require.NoError(t, os.Chmod(shared, 0o755))
	_, err = loadLogKey(keyPath, false, now)
	require.ErrorIs(t, err, privdir.ErrNotPrivate, "a data_dir the attacker made is theirs")
	require.ErrorContains(t, err, filepath.Dir(keyPath)+" is owned by uid 4017")

	// Even with the directories the server's again, the key is theirs.
	for _, d := range []string{dataDir, filepath.Dir(keyPath)} {
		require.NoError(t, os.Chown(d, 0, 0))
	}
	_, err = loadLogKey(keyPath, false, now)
	require.ErrorIs(t, err, privdir.ErrNotPrivate)
	require.ErrorContains(t, err, "is owned by uid 4017, not this daemon's (euid 0): whoever wrote it chose the key")

	// The genuine key, put back, is taken.
	require.NoError(t, os.RemoveAll(dataDir))
	require.NoError(t, os.Rename(dataDir+".old", dataDir))
	back, err := loadLogKey(keyPath, false, now)
	require.NoError(t, err)
	require.Equal(t, genuine, back)
}

// writeLogKeyPEM writes key as the server writes its log key.
func writeLogKeyPEM(path string, key ed25519.PrivateKey, created time.Time) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: logKeyPEMType, Headers: map[string]string{logKeyCreatedAt: created.Format(time.RFC3339)}, Bytes: der}), 0o600)
}
