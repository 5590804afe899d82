package gitrepo

import (
	"bytes"
	"compress/zlib"
	"crypto/sha1" //nolint:gosec // git's format
	"encoding/binary"
	"testing"
	"testing/fstest"
)

// The repository's files are the build step's: every parser of them is
// fuzzed.

func FuzzParseTree(f *testing.F) {
	f.Add([]byte("100644 a\x00" + string(make([]byte, 20)) + "40000 d\x00" + string(make([]byte, 20))))
	f.Add([]byte("100644 \x00"))
	f.Add([]byte("120000 ../x\x00" + string(make([]byte, 20))))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := parseTree(b)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.name == "" || e.name == "." || e.name == ".." || bytes.ContainsRune([]byte(e.name), '/') {
				t.Fatalf("accepted entry name %q", e.name)
			}
		}
	})
}

func FuzzParseLoose(f *testing.F) {
	f.Add([]byte("blob 3\x00abc"))
	f.Add([]byte("commit 0\x00"))
	f.Add([]byte("tree 01\x00a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, content, err := parseLooseContent(b)
		if err == nil && typ == "" {
			t.Fatal("no type")
		}
		_ = content
		// The zlib path too, bounded.
		var z bytes.Buffer
		w := zlib.NewWriter(&z)
		w.Write(b) //nolint:errcheck
		w.Close()
		s := &objectStore{lim: Limits{}.withDefaults()}
		s.lim.MaxObjectBytes = 1 << 16
		s.parseLoose(z.Bytes()) //nolint:errcheck
		s.parseLoose(b)         //nolint:errcheck
	})
}

func FuzzApplyDelta(f *testing.F) {
	f.Add([]byte("hello world"), []byte{11, 5, 0x90, 5})
	f.Add([]byte("abc"), []byte{3, 4, 0x91, 1, 2, 1, 'x', 0x80})
	f.Add([]byte(""), []byte{0, 1, 1, 'z'})
	f.Fuzz(func(t *testing.T, base, delta []byte) {
		out, err := applyDelta(base, delta, 1<<20)
		if err == nil && len(out) > 1<<20 {
			t.Fatal("delta exceeded the limit")
		}
	})
}

// indexFor builds a valid version 2 index of ids at offsets.
func indexFor(ids [][20]byte, offsets []uint32) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xff, 't', 'O', 'c', 0, 0, 0, 2})
	var fan [256]uint32
	for _, id := range ids {
		for i := int(id[0]); i < 256; i++ {
			fan[i]++
		}
	}
	for _, v := range fan {
		binary.Write(&b, binary.BigEndian, v) //nolint:errcheck
	}
	for _, id := range ids {
		b.Write(id[:])
	}
	b.Write(make([]byte, 4*len(ids))) // CRCs
	for _, o := range offsets {
		binary.Write(&b, binary.BigEndian, o) //nolint:errcheck
	}
	b.Write(make([]byte, 20))  // pack checksum
	sum := sha1.Sum(b.Bytes()) //nolint:gosec
	b.Write(sum[:])
	return b.Bytes()
}

func FuzzParseIndex(f *testing.F) {
	f.Add(indexFor([][20]byte{{1}, {2, 3}}, []uint32{12, 0x80000000}), []byte{2, 3})
	f.Add(indexFor(nil, nil), []byte{0})
	f.Fuzz(func(t *testing.T, idx, want []byte) {
		p, err := parseIndex(bytes.NewReader(idx), int64(len(idx)))
		if err != nil {
			return
		}
		var id ID
		copy(id[:], want)
		if off, ok, err := p.find(id); ok && (off < 0 || err != nil) {
			t.Fatal("negative offset")
		}
	})
}

func FuzzRefsAndConfig(f *testing.F) {
	f.Add([]byte("# pack-refs with: peeled\n0123456789abcdef0123456789abcdef01234567 refs/heads/main\n^89abcdef0123456789abcdef0123456789abcdef\n"), []byte("[remote \"origin\"]\n\turl = \"https://u:p@h/r\" # c\n[branch \"main\"]\n\tremote = origin\n"), "refs/heads/main")
	f.Add([]byte("x y\n"), []byte("[a \"b\\\"c\"]\nk = \"\\q\"\n[unterminated"), "refs/x")
	f.Fuzz(func(t *testing.T, packed, cfg []byte, ref string) {
		if id, err := packedRef(packed, ref); err == nil {
			if _, err := ParseID(id); err != nil {
				t.Fatalf("packedRef returned a bad ID %q", id)
			}
		}
		remoteURL(cfg, ref) //nolint:errcheck
		checkRefName(ref)   //nolint:errcheck
	})
}

// FuzzRead runs the whole reader over a repository whose HEAD, refs,
// config and objects are fuzzed, in an in-memory file system.
func FuzzRead(f *testing.F) {
	commit := []byte("tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a> 0 +0000\n\nm\n")
	loose := func(typ string, content []byte) []byte {
		var z bytes.Buffer
		w := zlib.NewWriter(&z)
		w.Write([]byte(typ + " " + itoa(len(content)) + "\x00")) //nolint:errcheck
		w.Write(content)                                         //nolint:errcheck
		w.Close()
		return z.Bytes()
	}
	cid := hashObject("commit", commit).String()
	f.Add([]byte("ref: refs/heads/main\n"), []byte(cid+"\n"), loose("commit", commit), loose("tree", nil), []byte("[remote \"origin\"]\nurl = https://h/r\n"))
	f.Add([]byte(cid+"\n"), []byte(""), loose("commit", []byte("tree zz\n")), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, head, ref, commitObj, treeObj, cfg []byte) {
		fsys := fstest.MapFS{
			".git/HEAD":            {Data: head},
			".git/refs/heads/main": {Data: ref},
			".git/config":          {Data: cfg},
			".git/objects/" + cid[:2] + "/" + cid[2:]:                {Data: commitObj},
			".git/objects/4b/825dc642cb6eb9a060e54bf8d69288fbee4904": {Data: treeObj},
		}
		src, err := Read(fsys, ".", Limits{MaxObjectBytes: 1 << 16, MaxFiles: 100})
		if err != nil {
			return
		}
		if src.Commit != cid {
			t.Fatalf("read commit %s, the only commit object is %s", src.Commit, cid)
		}
	})
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}
