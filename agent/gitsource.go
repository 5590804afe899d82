package agent

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/hallmark-dev/hallmark/agent/measure"
	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/internal/gitrepo"
)

// maxGitSources bounds the work trees read for one attestation.
const maxGitSources = 16

// gitWorkTrees finds and reads every git work tree of a step: the
// workspace itself and each product or material directory that holds a
// .git, from the repository's own files (never the caller's word). Its
// read method is a measure.WorkspaceReader, so it reads beneath the
// workspace the measurement walked, with the caller's credentials: what it
// records is what the caller could read.
type gitWorkTrees struct {
	paths []string // the request's products and materials, as named
	lim   measure.Limits
	found []gitWorkTree
}

type gitWorkTree struct {
	dir string
	src *gitrepo.Source
}

func (g *gitWorkTrees) read(ws *os.Root) error {
	fsys := gitrepo.FS(ws)
	var dirs []string
	for _, p := range append([]string{"."}, g.paths...) {
		c := path.Clean(strings.TrimPrefix(p, "./"))
		if !fs.ValidPath(c) || slices.Contains(dirs, c) {
			continue
		}
		// Usually nothing: one look-up beneath the workspace each.
		if _, err := ws.Lstat(path.Join(c, ".git")); err != nil {
			continue
		}
		if fi, err := fs.Stat(fsys, c); err != nil || !fi.IsDir() || !gitrepo.IsWorkTree(fsys, c) {
			continue
		}
		dirs = append(dirs, c)
	}
	for _, dir := range dirs {
		if len(g.found) == maxGitSources {
			return fmt.Errorf("more than %d git work trees", maxGitSources)
		}
		src, err := gitrepo.Read(fsys, dir, gitrepo.Limits{MaxFiles: g.lim.MaxFiles, MaxFileBytes: g.lim.MaxFileBytes, MaxTotalBytes: g.lim.MaxTotalBytes})
		if err != nil {
			return fmt.Errorf("git source: work tree %s: %w", dir, err)
		}
		g.found = append(g.found, gitWorkTree{dir: dir, src: src})
	}
	return nil
}

// sources are the work trees read, for the provenance. measured are the
// digests the agent took of the products and materials: a file of a clean
// work tree whose digest there differs from the one the git comparison
// read changed during the attestation, and the tree is recorded as not
// clean.
func (g *gitWorkTrees) sources(measured []measure.Digest) []attest.GitSource {
	var out []attest.GitSource
	for _, t := range g.found {
		out = append(out, attest.GitSource{
			Path: t.dir, Commit: t.src.Commit, Tree: t.src.Tree, Ref: t.src.Ref, RemoteURL: t.src.RemoteURL,
			Clean: t.src.Clean && sameAsCompared(t.dir, t.src.Files, measured),
		})
	}
	return out
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
