package limits

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// SubmissionBytes is what each entry adds to the protobuf encoding of a
// SubmitEntriesRequest, exactly.
func TestSubmissionBytesIsTheEncodedSize(t *testing.T) {
	req := &serverv1.SubmitEntriesRequest{}
	sum := 0
	for _, sizes := range [][2]int{{1, 1}, {0, 5}, {127, 128}, {300, 0}, {16383, 16384}, {1 << 20, 700}, {MaxEnvelopeBytes, MaxCertificateBytes}} {
		e := &serverv1.LogSubmission{Envelope: make([]byte, sizes[0]), Certificate: make([]byte, sizes[1])}
		req.Entries = append(req.Entries, e)
		sum += SubmissionBytes(sizes[0], sizes[1], 0)
		require.Equal(t, proto.Size(req), sum, "after an entry of %v", sizes)
	}
}

// The limits fit together: one entry of the largest envelope, certificate
// and timestamp fits a call, and a bundle the agent signs leaves the
// reserve for logging.
func TestLimitsFitTogether(t *testing.T) {
	require.LessOrEqual(t, SubmissionBytes(MaxEnvelopeBytes, MaxCertificateBytes, MaxTimestampBytes), MaxCallBytes)
	require.Equal(t, MaxBundleBytes, MaxSignedBundleBytes+LoggedMaterialReserve)
	require.LessOrEqual(t, MaxSignedBundleBytes, MaxEnvelopeBytes, "an envelope of a signed bundle is smaller than the bundle")
}
