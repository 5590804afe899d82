package spireadmin_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/spireadmin"
	"github.com/hallmark-dev/hallmark/internal/spireadmin/spiretest"
)

// ids names the authorities of a rotation as the steps go: "A" is the
// first active one, "B" the one prepared, "C" one that does not exist.
type ids struct{ a, b string }

func (i ids) of(name string) string {
	switch name {
	case "A":
		return i.a
	case "B":
		return i.b
	case "C":
		return "0123456789abcdef0123456789abcdef01234567"
	}
	return ""
}

type step struct {
	op      string // prepare, prepare-force, activate, taint, revoke
	id      string // "", "A", "B", "C": --authority-id
	wantErr string // empty: allowed
	// want after an allowed step: the phase, the active authority, the
	// bundle (IDs, "!" for tainted).
	wantPhase  string
	wantActive string
	wantBundle []string
}

func TestRotationSteps(t *testing.T) {
	cases := []struct {
		name  string
		steps []step
	}{
		{"full rotation", []step{
			{op: "prepare", wantPhase: "prepared", wantActive: "A", wantBundle: []string{"A", "B"}},
			{op: "activate", wantPhase: "activated", wantActive: "B", wantBundle: []string{"A", "B"}},
			{op: "taint", wantPhase: "tainted", wantActive: "B", wantBundle: []string{"A!", "B"}},
			{op: "revoke", wantPhase: "rotated", wantActive: "B", wantBundle: []string{"B"}},
		}},
		{"explicit IDs", []step{
			{op: "prepare", wantPhase: "prepared", wantActive: "A", wantBundle: []string{"A", "B"}},
			{op: "activate", id: "B", wantPhase: "activated", wantActive: "B", wantBundle: []string{"A", "B"}},
			{op: "taint", id: "A", wantPhase: "tainted", wantActive: "B", wantBundle: []string{"A!", "B"}},
			{op: "revoke", id: "A", wantPhase: "rotated", wantActive: "B", wantBundle: []string{"B"}},
		}},
		{"nothing to act on before prepare", []step{
			{op: "activate", wantErr: "activate: no prepared authority; run prepare first"},
			{op: "activate", id: "A", wantErr: "activate: authority A is already active"},
			{op: "taint", wantErr: "taint: no old authority; run prepare and activate first"},
			{op: "taint", id: "A", wantErr: "taint: A is the active authority and cannot be tainted"},
			{op: "revoke", wantErr: "revoke: no old authority; run activate and taint first"},
			{op: "revoke", id: "A", wantErr: "revoke: A is the active authority and cannot be revoked"},
		}},
		{"prepared: only activate of the prepared one", []step{
			{op: "prepare", wantPhase: "prepared", wantActive: "A", wantBundle: []string{"A", "B"}},
			{op: "prepare", wantErr: "prepare: authority B is already prepared; run activate, or replace it with --force"},
			{op: "taint", wantErr: "taint: no old authority; run activate first (prepared: B)"},
			{op: "revoke", wantErr: "revoke: no old authority; run activate and taint first"},
			{op: "activate", id: "C", wantErr: "activate: C is not the prepared authority (prepared: B)"},
			{op: "activate", id: "B", wantPhase: "activated", wantActive: "B", wantBundle: []string{"A", "B"}},
		}},
		{"activated: revoke needs taint first", []step{
			{op: "prepare", wantPhase: "prepared", wantActive: "A", wantBundle: []string{"A", "B"}},
			{op: "activate", wantPhase: "activated", wantActive: "B", wantBundle: []string{"A", "B"}},
			{op: "activate", wantErr: "activate: no prepared authority; run prepare first"},
			{op: "revoke", wantErr: "revoke: old authority A is not tainted; run taint first"},
			{op: "taint", id: "B", wantErr: "taint: B is the active authority and cannot be tainted"},
			{op: "taint", id: "C", wantErr: "taint: C is not the old authority (old: A)"},
			{op: "taint", wantPhase: "tainted", wantActive: "B", wantBundle: []string{"A!", "B"}},
			{op: "taint", wantErr: "taint: old authority A is already tainted; run revoke next"},
			{op: "prepare", wantErr: "prepare: old authority A is tainted but still in the bundle; run revoke first"},
			{op: "revoke", id: "B", wantErr: "revoke: B is the active authority and cannot be revoked"},
			{op: "revoke", id: "C", wantErr: "revoke: C is not the old authority (old: A)"},
			{op: "revoke", wantPhase: "rotated", wantActive: "B", wantBundle: []string{"B"}},
			{op: "revoke", wantErr: "revoke: old authority A is no longer in the bundle: already revoked"},
			{op: "taint", wantErr: "taint: old authority A is no longer in the bundle (revoked or expired)"},
		}},
		{"prepare --force replaces a prepared authority", []step{
			{op: "prepare", wantPhase: "prepared", wantActive: "A", wantBundle: []string{"A", "B"}},
			{op: "prepare-force", wantPhase: "prepared", wantActive: "A"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			fake := spiretest.Start(t)
			c, err := spireadmin.Dial("unix://" + fake.Socket)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			names := ids{a: fake.ActiveID()}
			for i, s := range tc.steps {
				before := len(fake.Calls())
				id := names.of(s.id)
				var got *spireadmin.Authority
				switch s.op {
				case "prepare":
					got, err = c.Prepare(ctx, spireadmin.PrepareOptions{})
				case "prepare-force":
					got, err = c.Prepare(ctx, spireadmin.PrepareOptions{Replace: true})
				case "activate":
					got, err = c.Activate(ctx, id)
				case "taint":
					got, err = c.Taint(ctx, id)
				case "revoke":
					got, err = c.Revoke(ctx, id)
				}
				if s.wantErr != "" {
					require.Error(t, err, "step %d %s %s", i, s.op, s.id)
					want := s.wantErr
					for _, n := range []string{"A", "B", "C"} {
						want = strings.ReplaceAll(want, " "+n+" ", " "+names.of(n)+" ")
						want = strings.ReplaceAll(want, ": "+n+")", ": "+names.of(n)+")")
					}
					require.Contains(t, err.Error(), want, "step %d %s %s", i, s.op, s.id)
					require.Len(t, fake.Calls(), before, "a refused step must not reach SPIRE")
					continue
				}
				require.NoError(t, err, "step %d %s %s", i, s.op, s.id)
				require.NotNil(t, got)
				if s.op == "prepare" {
					names.b = got.ID
				}
				st, err := c.State(ctx)
				require.NoError(t, err)
				phase, next := st.Phase()
				require.Equal(t, s.wantPhase, phase)
				require.NotEmpty(t, next)
				require.Equal(t, names.of(s.wantActive), st.Active.ID)
				if s.wantBundle != nil {
					var want []string
					for _, b := range s.wantBundle {
						n, tainted := strings.CutSuffix(b, "!")
						id := names.of(n)
						if tainted {
							id += "!"
						}
						want = append(want, id)
					}
					require.Equal(t, want, fake.BundleIDs())
					require.Len(t, st.Bundle, len(want))
				}
			}
		})
	}
}

// The state names each bundle root's role, and the authority IDs are what
// SVIDs carry as Authority Key ID.
func TestState(t *testing.T) {
	ctx := context.Background()
	fake := spiretest.Start(t)
	c, err := spireadmin.Dial(fake.Socket)
	require.NoError(t, err)
	defer c.Close()
	st, err := c.State(ctx)
	require.NoError(t, err)
	require.Equal(t, "example.org", st.TrustDomain)
	require.Nil(t, st.Prepared)
	require.Nil(t, st.Old)
	phase, _ := st.Phase()
	require.Equal(t, "steady", phase)
	require.Len(t, st.Bundle, 1)
	require.Equal(t, spireadmin.RoleActive, st.Bundle[0].Role)
	require.Equal(t, st.Active.ID, st.Bundle[0].ID)
	require.False(t, st.Active.ExpiresAt.IsZero())

	p, err := c.Prepare(ctx, spireadmin.PrepareOptions{})
	require.NoError(t, err)
	st, err = c.State(ctx)
	require.NoError(t, err)
	require.Equal(t, p.ID, st.Prepared.ID)
	b, ok := st.InBundle(p.ID)
	require.True(t, ok)
	require.Equal(t, spireadmin.RolePrepared, b.Role)
	require.Equal(t, p.ExpiresAt, b.NotAfter)
}

// SPIRE's own refusals come through with its code and message.
func TestSPIRERefusal(t *testing.T) {
	fake := spiretest.Start(t)
	c, err := spireadmin.Dial(fake.Socket)
	require.NoError(t, err)
	defer c.Close()
	fake.FailNext(status.Error(codes.FailedPrecondition, "local authority can't be tainted if there is an upstream authority"))
	_, err = c.Prepare(context.Background(), spireadmin.PrepareOptions{})
	require.ErrorContains(t, err, "prepare: SPIRE server refused (FailedPrecondition): local authority can't be tainted if there is an upstream authority")
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	for _, tc := range []struct{ socket, want string }{
		{"", "no SPIRE server socket given"},
		{filepath.Join(dir, "missing.sock"), "missing.sock: stat"},
		{file, "is not a socket"},
	} {
		_, err := spireadmin.Dial(tc.socket)
		require.ErrorContains(t, err, tc.want)
	}
}
