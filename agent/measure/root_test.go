//go:build linux

package measure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOpenRoot(t *testing.T) {
	modes(t, func(t *testing.T) {
		base, err := filepath.EvalSymlinks(t.TempDir())
		require.NoError(t, err)
		ws := filepath.Join(base, "ws")
		writeFile(t, ws, "out", []byte("product\n"))
		require.NoError(t, os.Symlink("ws", filepath.Join(base, "link")))

		for _, dir := range []string{ws, filepath.Join(base, "link"), base + "/./ws/", base + "/ws/../link"} {
			r, err := OpenRoot(dir)
			require.NoError(t, err, dir)
			require.Equal(t, ws, r.Path(), dir)
			got, err := r.Hash(context.Background(), []string{"out"}, Limits{})
			require.NoError(t, err)
			require.Equal(t, []Digest{{Name: "out", SHA256: hexDigest("product\n"), Size: 8}}, got)
			require.NoError(t, r.Close())
			_, err = r.Hash(context.Background(), []string{"out"}, Limits{})
			require.ErrorContains(t, err, "closed")
			require.NoError(t, r.Close())
		}

		_, err = OpenRoot("relative")
		require.ErrorContains(t, err, "not an absolute path")
		_, err = OpenRoot(filepath.Join(base, "missing"))
		require.ErrorIs(t, err, ErrNotFound)
		_, err = OpenRoot(filepath.Join(ws, "out"))
		require.ErrorContains(t, err, "not a directory")
	})
}

// The directory opened is the one measured, whatever happens to its path
// after the Root's Path was decided on.
func TestOpenRootPinsDirectory(t *testing.T) {
	modes(t, func(t *testing.T) {
		base, err := filepath.EvalSymlinks(t.TempDir())
		require.NoError(t, err)
		ws := filepath.Join(base, "ws")
		writeFile(t, ws, "out", []byte("granted"))
		writeFile(t, base, "elsewhere/out", []byte("elsewhere"))

		r, err := OpenRoot(ws)
		require.NoError(t, err)
		defer r.Close()
		require.NoError(t, os.Rename(ws, filepath.Join(base, "moved")))
		require.NoError(t, os.Symlink("elsewhere", ws))

		got, err := r.Hash(context.Background(), []string{"out"}, Limits{})
		require.NoError(t, err)
		require.Equal(t, hexDigest("granted"), got[0].SHA256)
	})
}

func TestOpenRootRemoved(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	require.NoError(t, os.Mkdir(dir, 0o755))
	fd, err := openRoot(dir, false)
	require.NoError(t, err)
	defer fd.Close()
	require.NoError(t, os.Remove(dir))
	_, err = fdPath(fd.sys.fd)
	require.ErrorContains(t, err, "removed")
}

// BenchmarkHashOneSmallFile is the common attestation: one small product.
func BenchmarkHashOneSmallFile(b *testing.B) {
	root := b.TempDir()
	writeFile(b, root, "out", []byte("product\n"))
	b.Run("Hash", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Hash(context.Background(), root, []string{"out"}, Limits{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("OpenRoot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := OpenRoot(root)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.Hash(context.Background(), []string{"out"}, Limits{}); err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
}

func hexDigest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
