package agent

import (
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/internal/policy"
	agentv1 "github.com/hallmark-dev/hallmark/proto/hallmark/agent/v1"
)

// FuzzAttestStepRequest feeds arbitrary bytes through what the agent does
// with a caller's request before measuring: the protobuf decoding gRPC
// does, then checkRequest, the gate's first stage. Whatever passes must be
// a request the rest of the pipeline can trust.
func FuzzAttestStepRequest(f *testing.F) {
	ws := f.TempDir()
	for _, r := range []*agentv1.AttestStepRequest{
		{Step: "build", Workspace: ws, Products: []string{"dist"}, Materials: []string{"src"}},
		{Step: "../x", Workspace: "relative", Products: []string{"../../etc/passwd"}},
		{Step: "build", Workspace: ws + "/../..", Products: []string{"a\x00b"}},
		{Step: strings.Repeat("s", 200), Workspace: ws},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xff, 0x01, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req agentv1.AttestStepRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		if checkRequest(&req) != nil {
			return
		}
		workspace := req.GetWorkspace()
		if !policy.ValidStepName(req.GetStep()) {
			t.Fatalf("accepted step %q", req.GetStep())
		}
		if !filepath.IsAbs(workspace) || filepath.Clean(workspace) != workspace {
			t.Fatalf("accepted workspace %q resolved to %q", req.GetWorkspace(), workspace)
		}
		if len(req.GetProducts()) == 0 || len(req.GetProducts())+len(req.GetMaterials()) > maxPaths {
			t.Fatalf("accepted %d products and %d materials", len(req.GetProducts()), len(req.GetMaterials()))
		}
		for _, p := range append(req.GetProducts(), req.GetMaterials()...) {
			if len(p) > maxPathLen || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
				t.Fatalf("accepted path %q", p)
			}
		}
	})
}
