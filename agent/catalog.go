package agent

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/hallmark-dev/hallmark/internal/exedigest"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor/spire"
	"github.com/hallmark-dev/hallmark/plugins/workloadattestor/unix"
)

// workloadAttestors is every workload attestor the agent knows, by the
// name a workload_attestor block uses. The attestors of one agent share
// digests, the executables' digests they may remember.
var workloadAttestors = map[string]func(body hcl.Body, digests *exedigest.Cache) (WorkloadAttestor, error){
	"unix": func(body hcl.Body, digests *exedigest.Cache) (WorkloadAttestor, error) {
		c, err := unix.ParseConfig(body)
		if err != nil {
			return nil, err
		}
		return unix.New(c, digests), nil
	},
	"spire": func(body hcl.Body, digests *exedigest.Cache) (WorkloadAttestor, error) {
		c, err := spire.ParseConfig(body)
		if err != nil {
			return nil, err
		}
		if c.Attest == spire.AttestUnixSelectors {
			return spire.NewSelectors(c, digests)
		}
		return spire.New(c)
	},
}

func newWorkloadAttestor(name string, body hcl.Body, digests *exedigest.Cache) (WorkloadAttestor, error) {
	build, ok := workloadAttestors[name]
	if !ok {
		names := make([]string, 0, len(workloadAttestors))
		for n := range workloadAttestors {
			names = append(names, n)
		}
		slices.Sort(names)
		return nil, fmt.Errorf("workload_attestor %q: unknown; known: %s", name, strings.Join(names, ", "))
	}
	return build(body, digests)
}
