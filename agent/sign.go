package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/trust"
	"github.com/hallmark-dev/hallmark/internal/limits"
)

// taintedSigningCutoff is how long after hearing of its CA's taint the
// agent still signs with a certificate: half the log's grace, the other
// half for the news to travel from the taint to the agent.
const taintedSigningCutoff = trust.TaintGrace / 2

// signRefusal is signStep's refusal of an attestation it will not sign,
// with how the local API reports it (a denial of that code and class).
type signRefusal struct {
	code   codes.Code
	class  string
	reason string
}

func (r *signRefusal) Error() string { return r.reason }

// signStep signs step with the held certificate's key and returns the
// bundle, with the RFC 3161 timestamp of its signature from the log's
// authority (timestamp.go); with none, the attestation is refused
// (Unavailable) and the signature dropped. It signs nothing the log would
// refuse: an attestation whose
// bundle, once logged, would be larger than the log and verifiers take
// (limits.MaxSignedBundleBytes) is refused, before signing, with a
// *signRefusal naming the limit. Other failures come as gRPC status
// errors. The local API calls it once policy, measuring and the caller
// check have passed.
func (a *Agent) signStep(ctx context.Context, step attest.Step, held *signingCert) ([]byte, error) {
	if fp, since, tainted := a.taintedSince(held); tainted {
		// The log admits the CA's certificates until trust.TaintGrace after
		// the taint; this agent heard of it at since, some time after the
		// taint. Past half the grace, what it signs with this certificate
		// might reach the log too late to be admitted: refuse rather than
		// tell the step of an attestation that would never verify.
		if held := a.cfg.Now().Sub(since); held > taintedSigningCutoff {
			a.nudgeRenewal()
			return nil, status.Errorf(codes.Unavailable, "attestation refused: the signing certificate's CA (sha256 %x) was tainted %s ago "+
				"and no certificate from another CA is held yet; the log would refuse what it signs, so nothing was signed "+
				"(renewal is under way; see `hallmark status`)", fp[:8], held.Round(time.Second))
		}
	}
	bundle, err := attest.SignWith(step, held.key, held.leaf(), attest.SignOptions{
		MaxBundleSize:    limits.MaxSignedBundleBytes,
		Timestamp:        a.timestampFor(ctx, held),
		MaxTimestampSize: limits.MaxTimestampBytes,
	})
	var se *attest.SizeError
	if errors.As(err, &se) {
		return nil, &signRefusal{code: codes.InvalidArgument, class: denyLimits, reason: fmt.Sprintf(
			"the attestation would be a bundle of %d bytes, more than the log takes: limits.MaxSignedBundleBytes is %d "+
				"(bundles of at most %d bytes, less %d for the log entry); nothing was signed: attest fewer products, "+
				"or an archive of them", se.Size, se.Limit, limits.MaxBundleBytes, limits.LoggedMaterialReserve)}
	}
	var te *timestampError
	if errors.As(err, &te) {
		return nil, status.Errorf(codes.Unavailable, "attestation refused: %v; without a timestamp from the log's authority it could not be "+
			"verified once its certificate expires, so nothing was handed out or queued (is hallmark-server reachable? see `hallmark status`)", te.err)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	return bundle, nil
}
