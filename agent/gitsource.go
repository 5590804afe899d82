package agent

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/hallmark-dev/hallmark/agent/measure"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/gitrepo"
)

// maxGitSources bounds the work trees read for one attestation.
const maxGitSources = 16

// gitSources reads, beneath the step's workspace root, every git work
// tree the step has: the workspace itself and each product or material
// directory that holds a .git, from the repository's own files (never
// the caller's word). measured are the digests the agent took of the
// products and materials: a file of a clean work tree whose digest there
// differs from the one the git comparison read changed during the
// attestation, and the tree is recorded as not clean.
func gitSources(root *measure.Root, paths []string, lim measure.Limits, measured []measure.Digest) ([]attest.GitSource, error) {
	// The workspace, and the named paths that are directories (a path
	// measured as a file is not one), that hold a .git: usually none,
	// found with one look-up beneath the root each.
	files := make(map[string]bool, len(measured))
	for _, d := range measured {
		files[d.Name] = true
	}
	var dirs []string
	for _, p := range append([]string{"."}, paths...) {
		c := path.Clean(strings.TrimPrefix(p, "./"))
		if fs.ValidPath(c) && !files[c] && !slices.Contains(dirs, c) && root.Exists(path.Join(c, ".git")) {
			dirs = append(dirs, c)
		}
	}
	if len(dirs) == 0 {
		return nil, nil
	}
	osRoot, err := root.OSRoot()
	if err != nil {
		return nil, err
	}
	defer osRoot.Close()
	fsys := osRoot.FS()
	var out []attest.GitSource
	for _, dir := range dirs {
		if fi, err := fs.Stat(fsys, dir); err != nil || !fi.IsDir() || !gitrepo.IsWorkTree(fsys, dir) {
			continue
		}
		if len(out) == maxGitSources {
			return nil, fmt.Errorf("more than %d git work trees", maxGitSources)
		}
		src, err := gitrepo.Read(fsys, dir, gitrepo.Limits{MaxFiles: lim.MaxFiles, MaxFileBytes: lim.MaxFileBytes, MaxTotalBytes: lim.MaxTotalBytes})
		if err != nil {
			return nil, fmt.Errorf("work tree %s: %w", dir, err)
		}
		clean := src.Clean && sameAsCompared(dir, src.Files, measured)
		out = append(out, attest.GitSource{
			Path: dir, Commit: src.Commit, Tree: src.Tree, Clean: clean, Ref: src.Ref, RemoteURL: src.RemoteURL,
		})
	}
	return out, nil
}

// sameAsCompared reports whether every measured file inside the work tree
// at dir has the digest of the bytes the clean check compared with the
// commit (files under .git are the repository, not the tree).
func sameAsCompared(dir string, files map[string]string, measured []measure.Digest) bool {
	for _, d := range measured {
		rel := d.Name
		if dir != "." {
			var ok bool
			if rel, ok = strings.CutPrefix(d.Name, dir+"/"); !ok {
				continue
			}
		}
		if rel == ".git" || strings.HasPrefix(rel, ".git/") {
			continue
		}
		if files[rel] != d.SHA256 {
			return false
		}
	}
	return true
}
