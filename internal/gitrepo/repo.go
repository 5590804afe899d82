// Package gitrepo reads a git work tree the way the agent must: from the
// repository's own files, without running git, confined to a file system
// the caller provides (the step's workspace, opened beneath its root). It
// returns the commit checked out, its tree, HEAD's branch, the remote's
// URL (credentials removed) and whether the work tree is clean: exactly
// the commit's tree, no file changed, missing or added.
//
// Everything read is untrusted input: the repository belongs to the build
// step. HEAD, refs, packed-refs and config are parsed strictly and
// bounded; objects (loose, zlib, and pack files with index version 2 and
// deltas) are hashed and compared with the ID they were read for, so a
// tampered object store cannot make a commit ID name other content. Only
// SHA-1 repositories are read; alternates, promisor remotes and
// submodules' content are not (a tree with a submodule is never clean).
package gitrepo

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"slices"
	"strings"
)

// Defaults of Limits.
const (
	DefaultMaxFiles       = 100000
	DefaultMaxFileBytes   = 1 << 30
	DefaultMaxTotalBytes  = 16 << 30
	DefaultMaxObjectBytes = 64 << 20
)

// Limits bound the work of Read; zero fields take their defaults.
type Limits struct {
	// MaxFiles bounds the entries compared: the tree's, and those of the
	// work tree that the tree does not list, counted together as they
	// are read (and, separately, the entries of the pack directory).
	// Directories are read a batch at a time, never whole, so that a
	// step's directory of millions of entries costs memory for at most
	// MaxFiles of them: more, and the tree is not compared.
	MaxFiles int
	// MaxFileBytes bounds one work-tree file, MaxTotalBytes all of them
	// and all objects inflated together.
	MaxFileBytes, MaxTotalBytes int64
	// MaxObjectBytes bounds one object, index or metadata file.
	MaxObjectBytes int64
}

func (l Limits) withDefaults() Limits {
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = DefaultMaxFileBytes
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if l.MaxObjectBytes <= 0 {
		l.MaxObjectBytes = DefaultMaxObjectBytes
	}
	return l
}

// Source is what Read found.
type Source struct {
	Commit, Tree string // lowercase hex
	// Ref is HEAD's symbolic ref, "" when HEAD is detached.
	Ref string
	// RemoteURL is the remote's URL with the user and password removed
	// (an scp-like user@host:path keeps its user), "" without a remote.
	RemoteURL string
	// Clean is true when the work tree is exactly Tree; false also when
	// it is too large to compare within the limits (Difference says so).
	Clean bool
	// Difference says why the tree is not clean (the first difference
	// found); empty when clean.
	Difference string
	// Files maps each file of a clean work tree (slash path relative to
	// it) to the SHA-256 of the bytes that were hashed as its git blob,
	// so a caller can tie other measurements to what was compared. A
	// symbolic link of the tree to one of its files maps to that file's.
	Files map[string]string
}

// ErrNotRepository means dir has no .git directory or file.
var ErrNotRepository = errors.New("gitrepo: not a git work tree")

// IsWorkTree reports whether dir in fsys has a .git entry.
func IsWorkTree(fsys fs.FS, dir string) bool {
	_, err := fs.Stat(fsys, path.Join(dir, ".git"))
	return err == nil
}

// Read reads the work tree at dir (a slash path in fsys, "." for its
// root): fsys must implement fs.ReadLinkFS so that symbolic links are
// compared, never followed. For a directory on disk, pass FS(root): a
// file system that can block on open (os.Root's own FS, on a FIFO) lets
// whoever writes the work tree stall Read.
func Read(fsys fs.FS, dir string, lim Limits) (*Source, error) {
	lim = lim.withDefaults()
	rl, ok := fsys.(fs.ReadLinkFS)
	if !ok {
		return nil, errors.New("gitrepo: the file system cannot read symbolic links")
	}
	gitDir, err := findGitDir(fsys, dir, lim)
	if err != nil {
		return nil, err
	}
	head, err := readLimited(fsys, path.Join(gitDir, "HEAD"), 4096)
	if err != nil {
		return nil, fmt.Errorf("gitrepo: HEAD: %w", err)
	}
	ref, commitHex, err := resolveHead(fsys, gitDir, head, lim)
	if err != nil {
		return nil, err
	}
	commitID, err := ParseID(commitHex)
	if err != nil {
		return nil, err
	}
	store, err := newObjectStore(fsys, path.Join(gitDir, "objects"), lim)
	if err != nil {
		return nil, err
	}
	defer store.close()
	typ, content, err := store.get(commitID)
	if err != nil {
		return nil, err
	}
	if typ != "commit" {
		return nil, fmt.Errorf("gitrepo: HEAD names a %s, not a commit", typ)
	}
	treeID, err := commitTree(content)
	if err != nil {
		return nil, err
	}
	src := &Source{Commit: commitID.String(), Tree: treeID.String(), Ref: ref}
	if cfg, err := readLimited(fsys, path.Join(gitDir, "config"), lim.MaxObjectBytes); err == nil {
		remote, err := remoteURL(cfg, ref)
		if err != nil {
			return nil, err
		}
		src.RemoteURL = remote
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("gitrepo: config: %w", err)
	}
	c := &comparer{fsys: fsys, rl: rl, store: store, lim: lim, files: map[string]string{}, links: map[string]string{}}
	diff, err := c.compareTree(dir, "", treeID, true, 0)
	var tooLarge *tooLargeError
	if errors.As(err, &tooLarge) {
		// The commit is known; whether the files are its tree is not:
		// never claim it.
		diff, err = "not compared: "+tooLarge.Error(), nil
	}
	if err != nil {
		return nil, err
	}
	src.Clean, src.Difference = diff == "", diff
	if src.Clean {
		src.Files = c.files
		// Links to files of the tree (relative, lexically inside it)
		// name those files' content; a link to a link is followed a few
		// times.
		for range 8 {
			for link, target := range c.links {
				if _, done := src.Files[link]; done || path.IsAbs(target) {
					continue
				}
				if sum, ok := src.Files[path.Join(path.Dir(link), target)]; ok {
					src.Files[link] = sum
				}
			}
		}
	}
	return src, nil
}

// findGitDir returns the repository directory of the work tree at dir: its
// .git directory, or the directory a .git file points to, which must be
// inside fsys (a relative gitdir: that does not climb out).
func findGitDir(fsys fs.FS, dir string, lim Limits) (string, error) {
	dotGit := path.Join(dir, ".git")
	fi, err := fs.Lstat(fsys, dotGit)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", ErrNotRepository
		}
		return "", fmt.Errorf("gitrepo: %w", err)
	}
	if fi.IsDir() {
		return dotGit, nil
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("gitrepo: %s is neither a directory nor a file", dotGit)
	}
	b, err := readLimited(fsys, dotGit, 4096)
	if err != nil {
		return "", err
	}
	target, ok := strings.CutPrefix(strings.TrimRight(string(b), "\r\n"), "gitdir: ")
	if !ok || path.IsAbs(target) || strings.ContainsAny(target, "\x00\n") {
		return "", fmt.Errorf("gitrepo: %s: only a relative 'gitdir:' inside the workspace is read", dotGit)
	}
	gitDir := path.Join(dir, target)
	if !fs.ValidPath(gitDir) {
		return "", fmt.Errorf("gitrepo: %s points outside the workspace", dotGit)
	}
	if _, err := fs.Stat(fsys, path.Join(gitDir, "commondir")); err == nil {
		return "", fmt.Errorf("gitrepo: %s is a linked work tree (git worktree): not read", dotGit)
	}
	return gitDir, nil
}

// maxSymrefDepth bounds ref: chains.
const maxSymrefDepth = 5

// resolveHead follows HEAD to a commit ID, returning HEAD's branch when
// it is symbolic.
func resolveHead(fsys fs.FS, gitDir string, head []byte, lim Limits) (ref, commit string, err error) {
	content := strings.TrimRight(string(head), "\n")
	branch := ""
	for depth := 0; ; depth++ {
		target, symbolic := strings.CutPrefix(content, "ref: ")
		if !symbolic {
			if _, err := ParseID(content); err != nil {
				return "", "", fmt.Errorf("gitrepo: HEAD: %w", err)
			}
			return branch, content, nil
		}
		if depth >= maxSymrefDepth {
			return "", "", errors.New("gitrepo: HEAD: symbolic refs nested too deep")
		}
		if err := checkRefName(target); err != nil {
			return "", "", err
		}
		if branch == "" {
			branch = target
		}
		b, err := readLimited(fsys, path.Join(gitDir, target), 4096)
		switch {
		case err == nil:
			content = strings.TrimRight(string(b), "\n")
		case errors.Is(err, fs.ErrNotExist):
			packed, err := readLimited(fsys, path.Join(gitDir, "packed-refs"), lim.MaxObjectBytes)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return "", "", fmt.Errorf("gitrepo: HEAD is %s, which has no commit yet", target)
				}
				return "", "", err
			}
			id, err := packedRef(packed, target)
			if err != nil {
				return "", "", err
			}
			return branch, id, nil
		default:
			return "", "", err
		}
	}
}

// checkRefName accepts refs/... names made of safe path components.
func checkRefName(ref string) error {
	if !strings.HasPrefix(ref, "refs/") || !fs.ValidPath(ref) || strings.ContainsAny(ref, "\\ ~^:?*[\x7f") {
		return fmt.Errorf("gitrepo: %.100q is not a ref name", ref)
	}
	for _, c := range []byte(ref) {
		if c < 0x20 {
			return fmt.Errorf("gitrepo: %.100q is not a ref name", ref)
		}
	}
	return nil
}

// packedRef finds ref in a packed-refs file: "ID REF" lines, '#' header
// and '^' peeled lines skipped.
func packedRef(packed []byte, ref string) (string, error) {
	for _, line := range strings.Split(string(packed), "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || line[0] == '#' || line[0] == '^' {
			continue
		}
		id, name, ok := strings.Cut(line, " ")
		if !ok {
			return "", errors.New("gitrepo: packed-refs: malformed line")
		}
		if name == ref {
			if _, err := ParseID(id); err != nil {
				return "", fmt.Errorf("gitrepo: packed-refs: %w", err)
			}
			return id, nil
		}
	}
	return "", fmt.Errorf("gitrepo: HEAD is %s, which has no commit yet", ref)
}

// commitTree returns a commit's tree: its first header line.
func commitTree(content []byte) (ID, error) {
	line, _, _ := bytes.Cut(content, []byte{'\n'})
	hexID, ok := bytes.CutPrefix(line, []byte("tree "))
	if !ok {
		return ID{}, errors.New("gitrepo: commit does not start with a tree line")
	}
	return ParseID(string(hexID))
}

// remoteURL returns the URL of HEAD's branch's remote, or of origin, or
// of the only remote, from a git config file, credentials removed.
func remoteURL(cfg []byte, ref string) (string, error) {
	vals, err := parseConfig(cfg)
	if err != nil {
		return "", err
	}
	remote := ""
	if b, ok := strings.CutPrefix(ref, "refs/heads/"); ok {
		remote = vals["branch."+b+".remote"]
	}
	if remote == "" && vals["remote.origin.url"] != "" {
		remote = "origin"
	}
	if remote == "" {
		var names []string
		for k := range vals {
			if name, ok := strings.CutPrefix(k, "remote."); ok {
				if n, ok := strings.CutSuffix(name, ".url"); ok {
					names = append(names, n)
				}
			}
		}
		if len(names) == 1 {
			remote = names[0]
		}
	}
	return stripCredentials(vals["remote."+remote+".url"]), nil
}

// parseConfig reads the section.subsection.key = value pairs of a git
// config file that remoteURL needs (the last value of a key wins, as for
// git's single-valued keys). Subsection names are kept as written; keys
// and section names are lowercased.
func parseConfig(cfg []byte) (map[string]string, error) {
	vals := map[string]string{}
	section := ""
	for i, line := range strings.Split(string(cfg), "\n") {
		line = strings.TrimSpace(strings.TrimRight(line, "\r"))
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			end := strings.LastIndexByte(line, ']')
			if end < 0 {
				return nil, fmt.Errorf("gitrepo: config line %d: unterminated section", i+1)
			}
			name := strings.TrimSpace(line[1:end])
			if sec, sub, ok := strings.Cut(name, " "); ok {
				sub = strings.TrimSpace(sub)
				if len(sub) < 2 || sub[0] != '"' || sub[len(sub)-1] != '"' {
					return nil, fmt.Errorf("gitrepo: config line %d: malformed subsection", i+1)
				}
				section = strings.ToLower(sec) + "." + strings.ReplaceAll(strings.ReplaceAll(sub[1:len(sub)-1], `\"`, `"`), `\\`, `\`)
			} else {
				section = strings.ToLower(name)
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue // a boolean key without a value
		}
		v, err := configValue(val)
		if err != nil {
			continue // a value git would refuse too: not one to record
		}
		vals[section+"."+strings.ToLower(strings.TrimSpace(key))] = v
	}
	return vals, nil
}

// configValue unquotes a git config value (git-config(1), "Syntax"):
// double quotes group, backslash escapes \\, \", \n, \t and \b, and '#' or
// ';' outside quotes starts a comment; whitespace outside quotes at the
// ends is dropped. (Continuation lines are not read: a remote URL has
// none.)
func configValue(raw string) (string, error) {
	var b strings.Builder
	quoted := false
	pending := 0 // spaces seen outside quotes, written only if more follows
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '"':
			quoted = !quoted
			continue
		case c == '\\':
			i++
			if i == len(raw) {
				return "", errors.New("backslash at the end of a value")
			}
			switch raw[i] {
			case '\\', '"':
				c = raw[i]
			case 'n':
				c = '\n'
			case 't':
				c = '\t'
			case 'b':
				c = '\b'
			default:
				return "", fmt.Errorf("unknown escape \\%c", raw[i])
			}
		case !quoted && (c == '#' || c == ';'):
			i = len(raw)
			continue
		case !quoted && (c == ' ' || c == '\t'):
			if b.Len() > 0 {
				pending++
			}
			continue
		}
		for ; pending > 0; pending-- {
			b.WriteByte(' ')
		}
		b.WriteByte(c)
	}
	if quoted {
		return "", errors.New("unterminated quote")
	}
	return b.String(), nil
}

// stripCredentials removes what a remote URL should never carry into an
// attestation: the password always, and for http(s) (or no scheme) the
// user name too. A URL with a control character, or one that does not
// parse and may hold a password ("user:pass@" anywhere), is not recorded
// at all: there is no telling where its credentials end.
func stripCredentials(raw string) string {
	if strings.ContainsFunc(raw, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		// An scp-like [user@]host:path has no password; keep it.
		if at := strings.IndexByte(raw, '@'); at >= 0 && strings.ContainsAny(raw[:at], ":/") {
			return ""
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	if u.Scheme == "" || u.Scheme == "http" || u.Scheme == "https" {
		u.User = nil
	} else {
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

// tooLargeError is a work tree too large to compare within the limits.
type tooLargeError struct{ msg string }

func (e *tooLargeError) Error() string { return e.msg }

// comparer walks a tree and the work tree together.
type comparer struct {
	fsys    fs.FS
	rl      fs.ReadLinkFS
	store   *objectStore
	lim     Limits
	files   map[string]string
	links   map[string]string
	entries int
	bytes   int64
}

// treeEntry is one entry of a tree object.
type treeEntry struct {
	mode, name string
	id         ID
}

// parseTree parses a tree object: "MODE NAME\0" and 20 bytes, repeated.
func parseTree(content []byte) ([]treeEntry, error) {
	var out []treeEntry
	for len(content) > 0 {
		head, rest, ok := bytes.Cut(content, []byte{0})
		if !ok || len(rest) < len(ID{}) {
			return nil, errors.New("gitrepo: tree entry truncated")
		}
		mode, name, ok := bytes.Cut(head, []byte{' '})
		if !ok || len(name) == 0 || bytes.ContainsRune(name, '/') || string(name) == "." || string(name) == ".." {
			return nil, fmt.Errorf("gitrepo: tree entry %.100q is malformed", head)
		}
		var e treeEntry
		e.mode, e.name = string(mode), string(name)
		copy(e.id[:], rest)
		out = append(out, e)
		content = rest[len(ID{}):]
	}
	return out, nil
}

// maxTreeDepth bounds the nesting of trees.
const maxTreeDepth = 256

// compareTree compares tree id with the directory dir of the work tree
// (rel is its path relative to the work tree's root); it returns the
// first difference, or "" when they are the same.
func (c *comparer) compareTree(dir, rel string, id ID, top bool, depth int) (string, error) {
	if depth > maxTreeDepth {
		return "", fmt.Errorf("gitrepo: trees nested deeper than %d", maxTreeDepth)
	}
	typ, content, err := c.store.get(id)
	if err != nil {
		return "", err
	}
	if typ != "tree" {
		return "", fmt.Errorf("gitrepo: %s is a %s, not a tree", id, typ)
	}
	entries, err := parseTree(content)
	if err != nil {
		return "", err
	}
	c.entries += len(entries)
	if c.entries > c.lim.MaxFiles {
		return "", &tooLargeError{fmt.Sprintf("more than %d tree entries", c.lim.MaxFiles)}
	}
	inTree := make(map[string]bool, len(entries))
	for _, e := range entries {
		if inTree[e.name] {
			return "", fmt.Errorf("gitrepo: tree %s lists %q twice", id, e.name)
		}
		inTree[e.name] = true
	}
	file, dirs, err := c.untracked(dir, inTree, top)
	if err != nil {
		return "", err
	}
	for _, d := range dirs {
		extra, err := c.hasFile(path.Join(dir, d), depth)
		if err != nil {
			return "", err
		}
		if extra {
			return "extra file " + join(rel, d), nil
		}
	}
	if file != "" {
		return "extra file " + join(rel, file), nil
	}
	for _, e := range entries {
		name, wt := join(rel, e.name), path.Join(dir, e.name)
		fi, err := fs.Lstat(c.fsys, wt)
		if errors.Is(err, fs.ErrNotExist) {
			return "missing " + name, nil
		}
		if err != nil {
			return "", fmt.Errorf("gitrepo: %w", err)
		}
		var diff string
		switch e.mode {
		case "40000":
			if !fi.IsDir() {
				return name + " is not a directory", nil
			}
			diff, err = c.compareTree(wt, name, e.id, false, depth+1)
		case "100644", "100755":
			diff, err = c.compareFile(wt, name, fi, e)
		case "120000":
			diff, err = c.compareLink(wt, name, fi, e)
		case "160000":
			diff = "submodule " + name + " (submodules are not read)"
		default:
			return "", fmt.Errorf("gitrepo: tree entry %s has mode %.10q", name, e.mode)
		}
		if err != nil || diff != "" {
			return diff, err
		}
	}
	return "", nil
}

// untracked reads directory dir of the work tree for the entries the tree
// does not list (nor .git, at the top), counting each against MaxFiles as
// it is read. It keeps what decides the first difference in git's sorted
// order: the least-named non-directory (file, "" when none) and, sorted,
// the untracked directories named before it, which may hold a file or
// only empty directories (git tracks none). So memory is bounded by a
// batch and those names, never by the size of the directory.
func (c *comparer) untracked(dir string, inTree map[string]bool, top bool) (file string, dirs []string, err error) {
	err = eachEntry(c.fsys, dir, func(e fs.DirEntry) (bool, error) {
		name := e.Name()
		if inTree[name] || (top && name == ".git") {
			return false, nil // counted as a tree entry
		}
		if err := c.count(dir); err != nil {
			return true, err
		}
		switch {
		case !e.IsDir():
			if file == "" || name < file {
				file = name
			}
		case file == "" || name < file:
			dirs = append(dirs, name)
		}
		return false, nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("gitrepo: %w", err)
	}
	if file != "" {
		dirs = slices.DeleteFunc(dirs, func(d string) bool { return d > file })
	}
	slices.Sort(dirs)
	return file, dirs, nil
}

// hasFile reports whether directory p, not in the tree, holds anything
// but directories. It stops at the first non-directory it reads, in
// whatever order the file system lists them: the answer, not the file,
// is what matters (a file decides even beside a subdirectory that cannot
// be read), and a directory of millions of untracked files is decided by
// its first batch. A directory of directories only is listed to its end
// (each entry counted against MaxFiles) and walked in sorted order.
func (c *comparer) hasFile(p string, depth int) (bool, error) {
	if depth > maxTreeDepth {
		return false, fmt.Errorf("gitrepo: directories nested deeper than %d", maxTreeDepth)
	}
	has := false
	var dirs []string
	err := eachEntry(c.fsys, p, func(e fs.DirEntry) (bool, error) {
		if err := c.count(p); err != nil {
			return true, err
		}
		if !e.IsDir() {
			has = true
			return true, nil
		}
		dirs = append(dirs, e.Name())
		return false, nil
	})
	if err != nil {
		return false, fmt.Errorf("gitrepo: %w", err)
	}
	if has {
		return true, nil
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		if has, err := c.hasFile(path.Join(p, d), depth+1); has || err != nil {
			return has, err
		}
	}
	return false, nil
}

// count counts one entry read in directory dir against MaxFiles.
func (c *comparer) count(dir string) error {
	if c.entries++; c.entries > c.lim.MaxFiles {
		return &tooLargeError{fmt.Sprintf("more than %d entries (MaxFiles), reading %s", c.lim.MaxFiles, dir)}
	}
	return nil
}

// dirBatch is how many entries one read of a directory returns: callers
// act on each batch before the next is read, so a directory's size
// costs memory only in what they keep of it.
const dirBatch = 256

// eachEntry calls fn with each entry of directory dir, in the order the
// file system lists them (not sorted), until fn returns done or an error,
// which it returns as is.
func eachEntry(fsys fs.FS, dir string, fn func(fs.DirEntry) (done bool, err error)) error {
	f, err := fsys.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	d, ok := f.(fs.ReadDirFile)
	if !ok {
		return &fs.PathError{Op: "readdir", Path: dir, Err: errors.New("not a directory")}
	}
	for {
		batch, err := d.ReadDir(dirBatch)
		for _, e := range batch {
			if done, err := fn(e); done || err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// compareFile hashes a regular file as a git blob (and with SHA-256)
// from one read, and compares mode and ID with the tree entry.
func (c *comparer) compareFile(p, name string, fi fs.FileInfo, e treeEntry) (string, error) {
	if !fi.Mode().IsRegular() {
		return name + " is not a regular file", nil
	}
	if exec := fi.Mode().Perm()&0o100 != 0; exec != (e.mode == "100755") {
		return name + ": executable bit differs", nil
	}
	if fi.Size() > c.lim.MaxFileBytes {
		return "", &tooLargeError{fmt.Sprintf("%s is larger than %d bytes", name, c.lim.MaxFileBytes)}
	}
	f, err := c.fsys.Open(p)
	if err != nil {
		return "", fmt.Errorf("gitrepo: %w", err)
	}
	defer f.Close()
	if c.bytes += fi.Size(); c.bytes > c.lim.MaxTotalBytes {
		return "", &tooLargeError{fmt.Sprintf("work tree larger than %d bytes", c.lim.MaxTotalBytes)}
	}
	// The header needs the size before the content: stream at most the
	// size seen (plus one byte, to see a file that grew) into both hashes.
	blob, sum := newObjectHash("blob", fi.Size()), sha256.New()
	n, err := io.Copy(io.MultiWriter(blob, sum), io.LimitReader(f, fi.Size()+1))
	if err != nil {
		return "", fmt.Errorf("gitrepo: %s: %w", name, err)
	}
	if n != fi.Size() {
		return name + " changed while it was read", nil
	}
	if ID(blob.Sum(nil)) != e.id {
		return name + " differs from the commit", nil
	}
	c.files[name] = hex.EncodeToString(sum.Sum(nil))
	return "", nil
}

// compareLink compares a symbolic link's target with the blob of a
// 120000 entry.
func (c *comparer) compareLink(p, name string, fi fs.FileInfo, e treeEntry) (string, error) {
	if fi.Mode()&fs.ModeSymlink == 0 {
		return name + " is not a symbolic link", nil
	}
	target, err := c.rl.ReadLink(p)
	if err != nil {
		return "", fmt.Errorf("gitrepo: %w", err)
	}
	if hashObject("blob", []byte(target)) != e.id {
		return name + ": link target differs from the commit", nil
	}
	c.links[name] = target
	return "", nil
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 4096) }
