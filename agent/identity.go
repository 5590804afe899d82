package agent

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// FetchIdentity asks the SPIRE Workload API at addr (unix://PATH) once for
// this process's X509-SVID and returns its SPIFFE ID: the identity SPIRE's
// registration entries give this binary, run as this user. It fails when
// no entry matches (SPIRE answers that no identity was issued).
func FetchIdentity(ctx context.Context, addr string) (spiffeid.ID, error) {
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agent: no X509-SVID from %s: %w", addr, err)
	}
	return svid.ID, nil
}
