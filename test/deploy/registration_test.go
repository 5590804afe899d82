package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
)

// entries returns the registration commands of a deploy/spire script: each
// line that starts with "entry " and the lines continuing it.
func entries(t *testing.T, script string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("../../deploy/spire", script))
	require.NoError(t, err)
	var out []string
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "entry ") {
			continue
		}
		e := lines[i]
		for strings.HasSuffix(lines[i], "\\") && i+1 < len(lines) {
			i++
			e += "\n" + lines[i]
		}
		out = append(out, e)
	}
	require.Len(t, out, 2, "%s registers the server and the agent", script)
	return out
}

// Must show: the documented registrations are the scripts' (the harness
// runs register-vm.sh), and they pin the daemons to what a build step
// cannot be: uid, path and sha256 on VMs; namespace, service account and
// container on Kubernetes, as the manifests name them.
func TestRegistrationsAreDocumentedAndPinned(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	vm := entries(t, "register-vm.sh")
	k8s := entries(t, "register-k8s.sh")
	for _, e := range append(append([]string{}, vm...), k8s...) {
		require.Contains(t, string(doc), e, "docs/configuration.md shows the script's entry as it is")
	}
	for _, e := range vm {
		for _, sel := range []string{`"unix:uid:$uid"`, `"unix:path:$`, `"unix:sha256:$(sha256 `} {
			require.Contains(t, e, sel)
		}
	}
	objs := objects(t)
	for i, name := range []string{"hallmark-server", "hallmark-agent"} {
		e := k8s[i]
		require.Contains(t, e, `"k8s:ns:$ns"`)
		require.Contains(t, e, `"k8s:sa:`+name+`"`)
		require.Contains(t, e, `"k8s:container-name:`+name+`"`)
		var spec struct {
			ns, sa, container string
		}
		switch o := objs[map[string]string{"hallmark-server": "Deployment/", "hallmark-agent": "DaemonSet/"}[name]+name].(type) {
		case *appsv1.Deployment:
			spec.ns, spec.sa, spec.container = o.Namespace, o.Spec.Template.Spec.ServiceAccountName, o.Spec.Template.Spec.Containers[0].Name
		case *appsv1.DaemonSet:
			spec.ns, spec.sa, spec.container = o.Namespace, o.Spec.Template.Spec.ServiceAccountName, o.Spec.Template.Spec.Containers[0].Name
		default:
			t.Fatalf("no workload for %s", name)
		}
		require.Equal(t, "hallmark", spec.ns, "register-k8s.sh's default namespace")
		require.Equal(t, name, spec.sa)
		require.Equal(t, name, spec.container)
	}
}
