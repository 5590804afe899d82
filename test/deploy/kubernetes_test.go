// Package deploy checks the shipped deployment files: every Kubernetes
// manifest decodes strictly into its API type (an unknown or misplaced
// field is an error), follows the hardening rules, and carries daemon
// configurations that the daemons' own parsers accept.
package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/hallmark-dev/hallmark/agent"
	"github.com/hallmark-dev/hallmark/server"
)

const dir = "../../deploy/kubernetes"

// objects decodes every document of every manifest strictly.
func objects(t *testing.T) map[string]any {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	out := map[string]any{}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, doc := range bytes.Split(data, []byte("\n---\n")) {
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			require.NoError(t, yaml.Unmarshal(doc, &meta), f)
			var obj any
			switch meta.Kind {
			case "Namespace":
				obj = &corev1.Namespace{}
			case "ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "PersistentVolumeClaim":
				obj = &corev1.PersistentVolumeClaim{}
			case "Service":
				obj = &corev1.Service{}
			case "Deployment":
				obj = &appsv1.Deployment{}
			case "DaemonSet":
				obj = &appsv1.DaemonSet{}
			case "PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			case "NetworkPolicy":
				obj = &networkingv1.NetworkPolicy{}
			default:
				t.Fatalf("%s: kind %q has no check here: add it", f, meta.Kind)
			}
			require.NoError(t, yaml.UnmarshalStrict(doc, obj), "%s: %s/%s", f, meta.Kind, meta.Metadata.Name)
			out[meta.Kind+"/"+meta.Metadata.Name] = obj
		}
	}
	return out
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	var k struct {
		Resources []string `json:"resources"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(data, &k))
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" {
			require.Contains(t, k.Resources, base)
		}
	}
}

func TestManifestsAreHardened(t *testing.T) {
	objs := objects(t)
	for _, want := range []string{"Deployment/hallmark-server", "DaemonSet/hallmark-agent", "Service/hallmark-server",
		"PodDisruptionBudget/hallmark-server", "NetworkPolicy/hallmark-server", "ConfigMap/hallmark-server", "ConfigMap/hallmark-agent"} {
		require.Contains(t, objs, want)
	}
	pods := map[string]corev1.PodSpec{
		"server": objs["Deployment/hallmark-server"].(*appsv1.Deployment).Spec.Template.Spec,
		"agent":  objs["DaemonSet/hallmark-agent"].(*appsv1.DaemonSet).Spec.Template.Spec,
	}
	for name, pod := range pods {
		t.Run(name, func(t *testing.T) {
			require.NotNil(t, pod.SecurityContext.SeccompProfile)
			require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, pod.SecurityContext.SeccompProfile.Type)
			require.NotNil(t, pod.AutomountServiceAccountToken)
			require.False(t, *pod.AutomountServiceAccountToken, "no Kubernetes API token")
			for _, c := range pod.Containers {
				sc := c.SecurityContext
				require.NotNil(t, sc)
				require.True(t, *sc.ReadOnlyRootFilesystem)
				require.False(t, *sc.AllowPrivilegeEscalation)
				require.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"))
				require.False(t, c.Resources.Requests.Cpu().IsZero(), "cpu request")
				require.False(t, c.Resources.Requests.Memory().IsZero(), "memory request")
				require.NotNil(t, c.ReadinessProbe)
				require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
			}
		})
	}
	server := pods["server"]
	require.True(t, *server.SecurityContext.RunAsNonRoot, "the server runs as non-root")
	require.Empty(t, server.Containers[0].SecurityContext.Capabilities.Add)
	agentPod := pods["agent"]
	require.True(t, agentPod.HostPID, "the agent sees its callers' processes")
	require.True(t, agentPod.HostNetwork, "the process events connector lives in the host network namespace")
	require.Equal(t, corev1.DNSClusterFirstWithHostNet, agentPod.DNSPolicy, "and the agent still resolves the server's Service")
	require.ElementsMatch(t, []corev1.Capability{"SYS_PTRACE", "SETUID", "SETGID", "NET_ADMIN", "DAC_OVERRIDE", "DAC_READ_SEARCH"},
		agentPod.Containers[0].SecurityContext.Capabilities.Add)
}

// The configurations shipped in the ConfigMaps are valid for the daemons.
func TestConfigMapsParse(t *testing.T) {
	objs := objects(t)
	srv := objs["ConfigMap/hallmark-server"].(*corev1.ConfigMap).Data["server.hcl"]
	cfg, err := server.ParseConfig("server.hcl", []byte(srv), func(string) string { return "" })
	require.NoError(t, err)
	require.NotNil(t, cfg.Policy, "the server pushes a policy")
	ag := objs["ConfigMap/hallmark-agent"].(*corev1.ConfigMap).Data["agent.hcl"]
	acfg, err := agent.ParseConfig("agent.hcl", []byte(ag))
	require.NoError(t, err)
	require.False(t, acfg.PolicyFromFile, "the agent follows the server's policy")
	require.Equal(t, 2000, acfg.SocketGID)
	require.True(t, strings.HasPrefix(acfg.SocketPath, "/run/hallmark/"), "the socket is in the shared hostPath")
}

// Must show: a build pod needs nothing of the node but the agent's socket
// directory: no host PID or network namespace, no privilege, no other
// hostPath; it reaches the socket through the group the agent gives it.
func TestBuildPodMountsOnlyTheSocket(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(dir, "examples", "build-pod.yaml"))
	require.NoError(t, err)
	var pod corev1.Pod
	require.NoError(t, yaml.UnmarshalStrict(data, &pod))
	spec := pod.Spec
	require.False(t, spec.HostPID)
	require.False(t, spec.HostNetwork)
	require.False(t, spec.HostIPC)
	var hostPaths []string
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths = append(hostPaths, v.HostPath.Path)
		}
	}
	require.Equal(t, []string{"/run/hallmark"}, hostPaths, "the agent's socket directory only")
	c := spec.Containers[0]
	require.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
	require.Contains(t, c.SecurityContext.Capabilities.Drop, corev1.Capability("ALL"))
	require.Empty(t, c.SecurityContext.Capabilities.Add)
	require.NotZero(t, *spec.SecurityContext.RunAsUser, "an ordinary user")

	ag := objects(t)["ConfigMap/hallmark-agent"].(*corev1.ConfigMap).Data["agent.hcl"]
	acfg, err := agent.ParseConfig("agent.hcl", []byte(ag))
	require.NoError(t, err)
	require.Contains(t, spec.SecurityContext.SupplementalGroups, int64(acfg.SocketGID), "the socket's group")
	var socket string
	for _, e := range c.Env {
		if e.Name == "HALLMARK_AGENT_SOCKET" {
			socket = e.Value
		}
	}
	require.Equal(t, acfg.SocketPath, socket)

	srv := objects(t)["ConfigMap/hallmark-server"].(*corev1.ConfigMap).Data["server.hcl"]
	scfg, err := server.ParseConfig("server.hcl", []byte(srv), func(string) string { return "" })
	require.NoError(t, err)
	granted := false
	for _, r := range scfg.Policy.Rules() {
		for _, root := range r.WorkspaceRoots {
			granted = granted || strings.HasPrefix(c.WorkingDir+"/", root+"/")
		}
	}
	require.True(t, granted, "the server's policy names the workspace as the pod sees it (%s)", c.WorkingDir)
}
