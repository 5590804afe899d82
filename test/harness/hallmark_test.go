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
	want := "go build -tags grpcnotrace -ldflags='-s -w' -o bin/ ./cmd/..."
	if got := strings.Join(BuildFlags, " "); got != "-tags grpcnotrace -ldflags=-s -w" {
		t.Fatalf("BuildFlags are %q, not the Makefile's", got)
	}
	if !strings.Contains(string(mk), "\n\t"+want+"\n") {
		t.Fatalf("the Makefile's build target is not %q", want)
	}
}
