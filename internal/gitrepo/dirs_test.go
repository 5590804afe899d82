package gitrepo

import (
	"io"
	"io/fs"
	"path"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

// reversedFS lists every directory of a MapFS in reverse name order, at
// most 7 entries per read (as getdents returns what fits its buffer), and
// records each read's count: a file system that lists in an order other
// than git's, to show that batching does not change what Read decides.
type reversedFS struct {
	fsys  fstest.MapFS
	reads *[]int
}

func (r reversedFS) Open(name string) (fs.File, error) {
	f, err := r.fsys.Open(name)
	if err != nil {
		return nil, err
	}
	d, ok := f.(fs.ReadDirFile)
	if !ok {
		return f, nil
	}
	all, err := d.ReadDir(-1)
	if err != nil {
		d.Close()
		return nil, err
	}
	slices.Reverse(all)
	return &reversedDir{ReadDirFile: d, left: all, reads: r.reads}, nil
}

func (r reversedFS) Lstat(name string) (fs.FileInfo, error) { return r.fsys.Lstat(name) }

func (r reversedFS) ReadLink(name string) (string, error) { return r.fsys.ReadLink(name) }

type reversedDir struct {
	fs.ReadDirFile
	left  []fs.DirEntry
	reads *[]int
}

func (d *reversedDir) ReadDir(n int) ([]fs.DirEntry, error) {
	*d.reads = append(*d.reads, n)
	if n <= 0 {
		out := d.left
		d.left = nil
		return out, nil
	}
	if len(d.left) == 0 {
		return nil, io.EOF
	}
	out := d.left[:min(n, 7, len(d.left))]
	d.left = d.left[len(out):]
	return out, nil
}

// looseObject adds an object to fsys and returns its ID.
func looseObject(fsys fstest.MapFS, typ string, content []byte) ID {
	id := hashObject(typ, content)
	h := id.String()
	fsys[".git/objects/"+h[:2]+"/"+h[2:]] = &fstest.MapFile{Data: deflate(append([]byte(typ+" "+itoa(len(content))+"\x00"), content...))}
	return id
}

// trackedC is a repository whose commit holds one empty file, c/cf.
func trackedC() fstest.MapFS {
	fsys := fstest.MapFS{"c/cf": {Data: nil, Mode: 0o644}}
	blob := looseObject(fsys, "blob", nil)
	c := looseObject(fsys, "tree", append([]byte("100644 cf\x00"), blob[:]...))
	root := looseObject(fsys, "tree", append([]byte("40000 c\x00"), c[:]...))
	commit := looseObject(fsys, "commit", []byte("tree "+root.String()+"\nauthor a <a> 0 +0000\n\nm\n"))
	fsys[".git/HEAD"] = &fstest.MapFile{Data: []byte(commit.String() + "\n")}
	return fsys
}

// sortedFirstExtra is what the clean check found when it listed each
// directory whole and sorted it: the first entry of dir, by name, that
// the tree does not list (tracked) and that is, or holds, anything but
// directories.
func sortedFirstExtra(t *testing.T, fsys fs.FS, dir, rel string, tracked ...string) string {
	var holds func(p string) bool
	holds = func(p string) bool {
		list, err := fs.ReadDir(fsys, p)
		require.NoError(t, err)
		for _, e := range list {
			if !e.IsDir() || holds(path.Join(p, e.Name())) {
				return true
			}
		}
		return false
	}
	list, err := fs.ReadDir(fsys, dir)
	require.NoError(t, err)
	for _, e := range list {
		if slices.Contains(tracked, e.Name()) {
			continue
		}
		if !e.IsDir() || holds(path.Join(dir, e.Name())) {
			return "extra file " + rel + e.Name()
		}
	}
	return ""
}

// FuzzUntrackedOrder adds untracked files and directories, named by the
// input, to a repository whose commit holds c/cf, and reads it listed in
// name order and in reverse, a few entries at a time: the first difference
// is the one the sorted, whole listing found, and no directory is ever
// asked for whole.
func FuzzUntrackedOrder(f *testing.F) {
	f.Add([]byte{})                 // clean
	f.Add([]byte{0, 0, 1, 0x1b})    // empty directories a and d/c: clean
	f.Add([]byte{0, 0, 12, 1})      // bf after the empty a
	f.Add([]byte{14, 0x3f, 1, 0})   // d/d/df, after a/a, empty
	f.Add([]byte{4, 2, 1, 6, 1, 2}) // c/af in the tracked c, among empty c/a and c/b
	f.Add([]byte{12, 1, 12, 0})     // bf and af: af, whichever is listed first
	f.Add([]byte{12, 1, 4, 0})      // bf and a/af: a
	f.Fuzz(func(t *testing.T, b []byte) {
		fsys := trackedC()
		// Each pair of bytes is a path of one to three components a-d; a
		// file's last component ends in f, so no file is also a directory.
		for i := 0; i+1 < len(b) && i < 64; i += 2 {
			depth := 1 + int(b[i]%3)
			var comps []string
			for j := range depth {
				comps = append(comps, string(rune('a'+(b[i+1]>>(2*j))&3)))
			}
			if b[i]&4 != 0 {
				comps[depth-1] += "f"
				fsys[path.Join(comps...)] = &fstest.MapFile{Mode: 0o644}
			} else {
				fsys[path.Join(comps...)] = &fstest.MapFile{Mode: fs.ModeDir | 0o755}
			}
		}
		want := sortedFirstExtra(t, fsys, ".", "", ".git", "c")
		if want == "" {
			want = sortedFirstExtra(t, fsys, "c", "c/", "cf")
		}
		var reads []int
		for _, fsys := range []fs.FS{fsys, reversedFS{fsys: fsys, reads: &reads}} {
			src, err := Read(fsys, ".", Limits{})
			require.NoError(t, err)
			require.Equal(t, want, src.Difference)
			require.Equal(t, want == "", src.Clean)
		}
		require.NotEmpty(t, reads, "the reversed listing was read")
		for _, n := range reads {
			require.True(t, n > 0 && n <= dirBatch, "a directory read asked for %d entries", n)
		}
	})
}

// The pack directory is the step's too: it is read a batch at a time,
// its indexes sorted whatever order it lists them in, and it fails at its
// MaxFiles-th entry or its maxPacks-th index instead of being listed whole.
func TestPackIndexes(t *testing.T) {
	many := func(n int, name func(i int) string) fstest.MapFS {
		fsys := fstest.MapFS{}
		for i := range n {
			fsys["pack/"+name(i)] = &fstest.MapFile{}
		}
		return fsys
	}
	for _, tc := range []struct {
		name    string
		fsys    fstest.MapFS
		lim     Limits
		want    []string
		wantErr string
	}{
		{"no pack directory", fstest.MapFS{}, Limits{}, nil, ""},
		{"indexes only, sorted", fstest.MapFS{
			"pack/pack-b.idx": {}, "pack/pack-b.pack": {}, "pack/pack-a.idx": {}, "pack/pack-a.keep": {},
			"pack/dir.idx": {Mode: fs.ModeDir}, "pack/link.idx": {Mode: fs.ModeSymlink, Data: []byte("pack-a.idx")},
		}, Limits{}, []string{"pack-a.idx", "pack-b.idx"}, ""},
		{"entries within MaxFiles", many(10, func(i int) string { return "x" + itoa(i) }), Limits{MaxFiles: 10}, nil, ""},
		{"entries over MaxFiles", many(11, func(i int) string { return "x" + itoa(i) }), Limits{MaxFiles: 10}, nil, "more than 10 entries (MaxFiles)"},
		{"indexes over maxPacks", many(maxPacks+1, func(i int) string { return "p" + itoa(i) + ".idx" }), Limits{}, nil, "more than 256 pack files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reads []int
			got, err := packIndexes(reversedFS{fsys: tc.fsys, reads: &reads}, "pack", tc.lim.withDefaults())
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			for _, n := range reads {
				require.True(t, n > 0 && n <= dirBatch, "a directory read asked for %d entries", n)
			}
		})
	}
}
