package verify_test

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/verifytest"
)

// Bundles written before Hallmark logs moved to hashedrekord (a dsse
// entry naming its log by the SHA-256 of the key's PKIX DER) still
// verify, and so do such entries served again under the new log ID; a
// hashedrekord entry must use the new ID.
func TestVerifyLegacyEntries(t *testing.T) {
	h, err := verifytest.New(t0)
	require.NoError(t, err)
	h.Legacy = true
	agent, err := h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(time.Minute))
	require.NoError(t, err)
	legacy, err := h.Attest(agent, step(agent.ID), t0)
	require.NoError(t, err)
	data, err := h.TrustedRootJSON()
	require.NoError(t, err)
	root, err := verify.ParseTrustedRoot(data)
	require.NoError(t, err)
	opts := verify.Options{TrustedRoot: root}

	require.Equal(t, "dsse", entryOf(legacy).GetKindVersion().GetKind())
	require.Equal(t, h.Log.LegacyID(), entryOf(legacy).GetLogId().GetKeyId())
	_, err = verify.Verify(marshal(t, legacy), []verify.Digest{product()}, opts)
	require.NoError(t, err, "a bundle as written before the change")

	entryOf(legacy).LogId.KeyId = h.Log.ID()
	_, err = verify.Verify(marshal(t, legacy), []verify.Digest{product()}, opts)
	require.NoError(t, err, "the same entry as the log serves it now")

	// Tampering is refused as ever.
	other := verify.DigestBytes("x", []byte("not the product"))
	_, err = verify.Verify(marshal(t, legacy), []verify.Digest{other}, opts)
	requireCheck(t, err, verify.CheckSubject)

	h.Legacy = false
	current, err := h.Attest(agent, step(agent.ID), t0)
	require.NoError(t, err)
	require.Equal(t, "hashedrekord", entryOf(current).GetKindVersion().GetKind())
	_, err = verify.Verify(marshal(t, current), []verify.Digest{product()}, opts)
	require.NoError(t, err)
	entryOf(current).LogId.KeyId = h.Log.LegacyID()
	_, err = verify.Verify(marshal(t, current), []verify.Digest{product()}, opts)
	requireCheck(t, err, verify.CheckTlog)

	// kindVersion must name the body's kind.
	entryOf(current).LogId.KeyId = h.Log.ID()
	entryOf(current).KindVersion.Kind = "dsse"
	_, err = verify.Verify(marshal(t, current), []verify.Digest{product()}, opts)
	requireCheck(t, err, verify.CheckTlog)
	require.ErrorContains(t, err, "its kindVersion says")
}

func requireCheck(t *testing.T, err error, check string) {
	t.Helper()
	var ce *verify.CheckError
	require.True(t, errors.As(err, &ce), "want a CheckError, got %v", err)
	require.Equal(t, check, ce.Check, "%v", err)
}

// admitFixture signs a step as agent and returns what a log receives.
func admitEntry(t *testing.T, agent *verifytest.Agent, s attest.Step) verify.Entry {
	t.Helper()
	signed, err := attest.Sign(s, agent.Key, agent.Cert)
	require.NoError(t, err)
	b, err := attest.ParseBundle(signed)
	require.NoError(t, err)
	return verify.Entry{Envelope: b.GetDsseEnvelope(), Certificate: agent.Cert}
}

func TestAdmit(t *testing.T) {
	f := newFixture(t)
	now := t0.Add(2 * time.Minute)
	e := admitEntry(t, f.agent, step(f.agent.ID))

	// Without a timestamp the time is now.
	a, err := f.root.Admit(e, now)
	require.NoError(t, err)
	require.Equal(t, now, a.Time)
	require.False(t, a.Timestamped)
	require.Equal(t, f.agent.ID, a.BuilderID)
	require.Len(t, a.Subjects, 2)
	require.Equal(t, f.h.CAs[0].Cert.Raw, a.Issuer.Raw)

	// The agent's certificate is valid to t0+9m: later, it is refused...
	late := t0.Add(time.Hour)
	_, err = f.root.Admit(e, late)
	requireCheck(t, err, verify.CheckValidity)

	// ...unless the entry carries a timestamp from when it was signed:
	// then it is admitted late, at its timestamp.
	stamp, err := f.h.TSA.Signer.Timestamp(e.Envelope.GetSignatures()[0].GetSig(), now)
	require.NoError(t, err)
	e.Timestamp = stamp
	a, err = f.root.Admit(e, late)
	require.NoError(t, err)
	require.Equal(t, now, a.Time.UTC())
	require.True(t, a.Timestamped)

	// A timestamp from an authority the trusted root does not list, or
	// over another signature, is refused.
	rogue, err := verifytest.NewTSA("rogue", t0.Add(-time.Hour))
	require.NoError(t, err)
	e.Timestamp, err = rogue.Signer.Timestamp(e.Envelope.GetSignatures()[0].GetSig(), now)
	require.NoError(t, err)
	_, err = f.root.Admit(e, late)
	requireCheck(t, err, verify.CheckTimestamp)
	e.Timestamp, err = f.h.TSA.Signer.Timestamp([]byte("another signature"), now)
	require.NoError(t, err)
	_, err = f.root.Admit(e, late)
	requireCheck(t, err, verify.CheckTimestamp)
	e.Timestamp = nil

	// The checks Verify runs on the signature, chain, statement and
	// predicate are the log's too.
	tests := []struct {
		name  string
		entry func() verify.Entry
		check string
	}{
		{"signature by another key", func() verify.Entry {
			other, err := f.h.CAs[0].NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(9*time.Minute))
			require.NoError(t, err)
			o := admitEntry(t, other, step(f.agent.ID))
			return verify.Entry{Envelope: o.Envelope, Certificate: f.agent.Cert}
		}, verify.CheckSignature},
		{"certificate of an unknown CA", func() verify.Entry {
			rogue, err := verifytest.NewCA("rogue", t0.Add(-time.Hour), t0.Add(time.Hour))
			require.NoError(t, err)
			ag, err := rogue.NewAgent(verifytest.AgentID, t0.Add(-time.Minute), t0.Add(9*time.Minute))
			require.NoError(t, err)
			return admitEntry(t, ag, step(ag.ID))
		}, verify.CheckChain},
		{"not a statement", func() verify.Entry {
			env, err := attest.SignEnvelope([]byte(`{"hello":1}`), f.agent.Key)
			require.NoError(t, err)
			return verify.Entry{Envelope: env, Certificate: f.agent.Cert}
		}, verify.CheckStatement},
		{"builder.id of another agent", func() verify.Entry {
			return admitEntry(t, f.agent, step("spiffe://example.org/hallmark/agent/other"))
		}, verify.CheckPredicate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.root.Admit(tc.entry(), now)
			requireCheck(t, err, tc.check)
		})
	}
	_, err = f.root.Admit(verify.Entry{}, now)
	require.Error(t, err)
}

// Admit and Verify draw the same line at the certificate's expiry: an
// entry admitted at t verifies with a timestamp at t.
func TestAdmitAndVerifyAgreeAtBoundaries(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		at   func(c *x509.Certificate) time.Time
		ok   bool
	}{
		{"at NotBefore", func(c *x509.Certificate) time.Time { return c.NotBefore }, true},
		{"before NotBefore", func(c *x509.Certificate) time.Time { return c.NotBefore.Add(-time.Second) }, false},
		{"at NotAfter", func(c *x509.Certificate) time.Time { return c.NotAfter }, true},
		{"after NotAfter", func(c *x509.Certificate) time.Time { return c.NotAfter.Add(time.Second) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := tc.at(f.agent.Cert)
			_, admitErr := f.root.Admit(admitEntry(t, f.agent, step(f.agent.ID)), at)
			b, err := f.h.Attest(f.agent, step(f.agent.ID), at)
			require.NoError(t, err)
			_, verifyErr := verify.Verify(marshal(t, b), []verify.Digest{product()}, verify.Options{TrustedRoot: f.root})
			require.Equal(t, tc.ok, admitErr == nil, "admit: %v", admitErr)
			require.Equal(t, tc.ok, verifyErr == nil, "verify: %v", verifyErr)
		})
	}
}
