package server

import (
	"fmt"
	"sync"
	"time"

	"github.com/hallmark-dev/hallmark/attest/tsa"
	"github.com/hallmark-dev/hallmark/internal/limits"
)

// Late entries (docs/log.md): an agent obtains the RFC 3161 timestamp of
// a signature from this log's timestamp authority when it signs
// (Timestamp), and submits it with the entry. The log then checks the
// entry at the timestamp's genTime, not when the entry arrives, so an
// entry signed before an outage of any length is still logged after it,
// even once its certificate has expired; verifiers take their time from
// the same timestamp. An entry without a timestamp (an agent before
// Timestamp) is checked and timestamped on acceptance, as before.

// checkTime is when the log checks a submission whose envelope carries
// sig: the genTime of its timestamp, which must be a TimeStampResp of this
// log's authority, valid at genTime, over SHA-256(sig) (tsa.Authority.
// Verify); now when it has none.
func (l *TransparencyLog) checkTime(timestamp, sig []byte, now time.Time) (at time.Time, timestamped bool, err error) {
	if len(timestamp) == 0 {
		return now, false, nil
	}
	if len(timestamp) > limits.MaxTimestampBytes {
		return time.Time{}, false, fmt.Errorf("timestamp is %d bytes, more than the %d allowed", len(timestamp), limits.MaxTimestampBytes)
	}
	auth, err := l.tsaAuthority()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("timestamp authority: %w", err)
	}
	gen, err := auth.Verify(timestamp, sig)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("timestamp: %w", err)
	}
	return gen, true, nil
}

// newTSAAuthority returns the verifier of signer's timestamps, built once
// on first use: its chain checked against its own root.
func newTSAAuthority(signer *tsa.Signer) func() (*tsa.Authority, error) {
	return sync.OnceValues(func() (*tsa.Authority, error) {
		return tsa.NewAuthorityFromChain(signer.Chain())
	})
}
