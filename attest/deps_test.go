package attest_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNoRepoImports keeps package attest a standalone library: consumers
// depend on it alone, so it imports nothing from this repository.
func TestNoRepoImports(t *testing.T) {
	const repo = "github.com/hallmark-dev/hallmark"
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		require.NoError(t, err)
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			require.NoError(t, err)
			require.False(t, path == repo || strings.HasPrefix(path, repo+"/"),
				"%s imports %s: package attest must not import the repository", name, path)
		}
	}
}
