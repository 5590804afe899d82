package verify_test

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

// TestImports keeps package verify importable on its own: of this
// repository it may import only attest and attest/tlog.
func TestImports(t *testing.T) {
	const repo = "github.com/hallmark-dev/hallmark"
	allowed := map[string]bool{repo + "/attest": true, repo + "/attest/tlog": true}
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
			inRepo := path == repo || strings.HasPrefix(path, repo+"/")
			require.False(t, inRepo && !allowed[path], "%s imports %s: package verify may import only attest and attest/tlog of this repository", name, path)
		}
	}
}
