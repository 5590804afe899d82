package harness

import (
	"os"
	"strings"
	"testing"
)

// The tests, the bench and the dev stack run the binaries `make build`
// gives users: the same linker flags.
func TestBuildBinariesLinksAsMakeBuild(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	want := "go build -ldflags='" + LinkFlags + "' -o bin/ ./cmd/..."
	if !strings.Contains(string(mk), "\n\t"+want+"\n") {
		t.Fatalf("the Makefile's build target is not %q", want)
	}
}
