package outbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// writeFile writes data as the outbox file of a fresh directory.
func writeFile(t testing.TB, data []byte) (dir, path string) {
	t.Helper()
	dir = privateDir(t)
	path = filepath.Join(dir, "outbox.log")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return dir, path
}

// header is a version 2 file header claiming version v, its CRC right.
func header(v uint32) []byte {
	b := append([]byte("\x89HMOUTB\n"), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[8:], v)
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[:12], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

// A file Open cannot read fails it and is left byte for byte as it was:
// a newer format version, or no format at all.
func TestOpenRefusesWhatItCannotRead(t *testing.T) {
	frame, err := appendFrame(nil, record{Op: "put", Item: &Item{ID: "a", Bundle: []byte("b")}})
	require.NoError(t, err)
	for name, tt := range map[string]struct {
		data []byte
		want string
	}{
		"newer version":              {append(header(3), frame...), "format version 3 is not one this agent reads (1 to 2)"},
		"version 0":                  {append(header(0), frame...), "format version 0"},
		"garbage":                    {bytes.Repeat([]byte("not an outbox at all "), 50), "no sound header and no intact record"},
		"damaged header, no records": {append([]byte("\x89HMOUTB\n\x02\x00\x00\x00"), 1, 2, 3, 4), "no sound header"},
	} {
		t.Run(name, func(t *testing.T) {
			dir, path := writeFile(t, tt.data)
			_, err := Open(dir, Options{})
			require.True(t, errors.Is(err, ErrUnknownFormat), "%v", err)
			require.ErrorContains(t, err, tt.want)
			require.ErrorContains(t, err, "the file is left as it is")
			after, rerr := os.ReadFile(path)
			require.NoError(t, rerr)
			require.Equal(t, tt.data, after, "untouched")
			_, serr := os.Stat(filepath.Join(dir, DamagedDir))
			require.True(t, os.IsNotExist(serr), "nothing moved aside")
		})
	}
}

// A new outbox starts with a version 2 header; an empty file is a new
// outbox too.
func TestOpenWritesTheHeader(t *testing.T) {
	for _, data := range [][]byte{nil, {}} {
		dir := privateDir(t)
		if data != nil {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "outbox.log"), data, 0o600))
		}
		o, err := Open(dir, Options{})
		require.NoError(t, err)
		require.NoError(t, o.Close())
		got, err := os.ReadFile(filepath.Join(dir, "outbox.log"))
		require.NoError(t, err)
		require.Equal(t, header(Version), got)
	}
}

// A version 1 file (no header, length-CRC frames) with a damaged record in
// the middle keeps every record around it and moves the damaged one
// aside; it is rewritten as version 2. (Version 1 agents dropped
// everything from the damage on.)
func TestOpenVersion1IsolatesDamage(t *testing.T) {
	var file []byte
	var starts []int
	for _, id := range []string{"a", "b", "c", "d"} {
		starts = append(starts, len(file))
		file = append(file, jsonFrame(t, record{Op: "put", Item: &Item{ID: id, Bundle: []byte("bundle-" + id), Created: 1}})...)
	}
	starts = append(starts, len(file))
	for _, off := range []int{starts[1], starts[1] + 2, starts[1] + 5, starts[1] + 12, starts[2] - 1} { // b's length, CRC, body
		t.Run("", func(t *testing.T) {
			damaged := bytes.Clone(file)
			damaged[off] ^= 0x40
			dir, path := writeFile(t, damaged)
			o, err := Open(dir, Options{Retention: 1 << 62})
			require.NoError(t, err)
			defer o.Close()
			var ids []string
			for _, it := range o.Pending(10) {
				ids = append(ids, it.ID)
			}
			require.Equal(t, []string{"a", "c", "d"}, ids)
			d := o.Damaged()
			require.Len(t, d, 1)
			kept, err := os.ReadFile(d[0].File)
			require.NoError(t, err)
			require.Equal(t, damaged[starts[1]:starts[2]], kept)
			now, err := os.ReadFile(path)
			require.NoError(t, err)
			v, ok := readHeader(now)
			require.True(t, ok)
			require.Equal(t, uint32(Version), v, "migrated")
		})
	}
}

// The damaged directory is 0700 and its files 0600: they hold
// attestations.
func TestDamagedKeptPrivately(t *testing.T) {
	dir := privateDir(t)
	o, err := Open(dir, Options{})
	require.NoError(t, err)
	require.NoError(t, o.Put(Item{ID: "a", Bundle: []byte("x")}))
	require.NoError(t, o.Put(Item{ID: "b", Bundle: []byte("y")}))
	require.NoError(t, o.Close())
	path := filepath.Join(dir, "outbox.log")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data[headerSize+frameHead+2] ^= 1 // a's body
	require.NoError(t, os.WriteFile(path, data, 0o600))
	o, err = Open(dir, Options{})
	require.NoError(t, err)
	defer o.Close()
	require.Equal(t, 1, o.Len())
	fi, err := os.Stat(filepath.Join(dir, DamagedDir))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	d := o.Damaged()
	require.Len(t, d, 1)
	fi, err = os.Stat(d[0].File)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	gotDir, n := o.DamagedFiles()
	require.Equal(t, filepath.Join(dir, DamagedDir), gotDir)
	require.Equal(t, 1, n)
}

// FuzzOpen opens arbitrary files: Open never panics, and what it opens
// holds items it can give back; opening the rewritten file again finds
// the same pending items and no damage.
func FuzzOpen(f *testing.F) {
	var valid []byte
	valid = append(valid, header(Version)...)
	for _, rec := range []record{
		{Op: "put", Item: &Item{ID: "a", Bundle: []byte("bundle-a"), Certificate: []byte("c"), Created: 1}},
		{Op: "put", Item: &Item{ID: "b", Bundle: []byte("bundle-b"), Created: 2}},
		{Op: "logged", ID: "a", Logged: []byte(`{}`), At: 3},
		{Op: "refused", ID: "b", Reason: "no", At: 3},
		{Op: "put", Item: &Item{ID: "c", Envelope: []byte("env"), Created: 4}},
	} {
		var err error
		valid, err = appendFrame(valid, rec)
		require.NoError(f, err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(jsonFrame(f, record{Op: "put", Item: &Item{ID: "v1"}}))
	f.Add(header(3))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir, _ := writeFile(t, data)
		o, err := Open(dir, Options{Retention: 1 << 62})
		if err != nil {
			require.ErrorIs(t, err, ErrUnknownFormat)
			return
		}
		pending := o.Pending(1 << 20)
		require.Len(t, pending, o.Len())
		for _, it := range pending {
			got, ok := mustGet(t, o, it.ID)
			require.True(t, ok)
			require.Equal(t, Pending, got.State)
		}
		require.NoError(t, o.Close())
		o, err = Open(dir, Options{Retention: 1 << 62})
		require.NoError(t, err, "a rewritten outbox opens")
		defer o.Close()
		require.Empty(t, o.Damaged(), "a rewritten outbox has no damage")
		require.Equal(t, pending, o.Pending(1<<20))
	})
}
