package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/internal/spireadmin/spiretest"
)

// runCLI runs the hallmark command line in process.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := rootCmd(nil)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// Each step through the CLI against the fake SPIRE server: allowed steps
// print what they did and the state they leave; refused ones say why.
func TestAdminRotateSPIRE(t *testing.T) {
	fake := spiretest.Start(t)
	a := fake.ActiveID()
	sock := []string{"--spire-socket", fake.Socket}
	rotate := func(step string, extra ...string) (string, error) {
		return runCLI(t, append(append([]string{"admin", "rotate", "spire", step}, sock...), extra...)...)
	}

	_, err := rotate("taint")
	require.EqualError(t, err, "taint: no old authority; run prepare and activate first")
	_, err = rotate("revoke")
	require.EqualError(t, err, "revoke: no old authority; run activate and taint first")
	_, err = rotate("activate")
	require.EqualError(t, err, "activate: no prepared authority; run prepare first")

	out, err := rotate("prepare", "--json")
	require.NoError(t, err)
	var prepared struct {
		Step      string
		Authority struct{ ID string }
		State     struct {
			Phase    string
			Prepared struct{ ID string }
			Bundle   []struct{ ID, Role string }
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &prepared), out)
	b := prepared.Authority.ID
	require.Equal(t, "prepare", prepared.Step)
	require.Equal(t, "prepared", prepared.State.Phase)
	require.Equal(t, b, prepared.State.Prepared.ID)
	require.Len(t, prepared.State.Bundle, 2)

	_, err = rotate("taint")
	require.EqualError(t, err, "taint: no old authority; run activate first (prepared: "+b+")")

	out, err = rotate("activate")
	require.NoError(t, err)
	require.Contains(t, out, "activated X.509 authority "+b)
	require.Contains(t, out, "  active    "+b)
	require.Contains(t, out, "  old       "+a)
	require.Contains(t, out, ", still trusted")
	require.Contains(t, out, "phase:    activated")

	_, err = rotate("revoke")
	require.EqualError(t, err, "revoke: old authority "+a+" is not tainted; run taint first, and revoke once every SVID it signed is replaced")
	_, err = rotate("taint", "--authority-id", b)
	require.EqualError(t, err, "taint: "+b+" is the active authority and cannot be tainted; prepare and activate a new one first")

	out, err = rotate("taint")
	require.NoError(t, err)
	require.Contains(t, out, "tainted X.509 authority "+a)
	require.Contains(t, out, a+"  old, TAINTED")
	require.Contains(t, out, "phase:    tainted")

	out, err = rotate("revoke", "--authority-id", a)
	require.NoError(t, err)
	require.Contains(t, out, "revoked X.509 authority "+a)
	require.Contains(t, out, "revoked (not in the bundle)")
	require.Contains(t, out, "bundle (sequence")
	require.Contains(t, out, ": 1 X.509 authorities")
	require.Contains(t, out, "phase:    rotated")
	require.Equal(t, []string{"prepare", "activate " + b, "taint " + a, "revoke " + a}, fake.Calls())
}

// admin status shows every section; a section that fails shows its error
// and fails the command.
func TestAdminStatus(t *testing.T) {
	fake := spiretest.Start(t)
	out, err := runCLI(t, "admin", "status", "--spire-socket", fake.Socket)
	require.NoError(t, err)
	require.Contains(t, out, "SPIRE X.509 authorities (trust domain example.org")
	require.Contains(t, out, "  active    "+fake.ActiveID())
	require.Contains(t, out, "phase:    steady")

	out, err = runCLI(t, "admin", "status", "--json", "--spire-socket", fake.Socket)
	require.NoError(t, err)
	var st map[string]struct {
		Active struct{ ID string }
		Phase  string
	}
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, fake.ActiveID(), st["spire"].Active.ID)

	t.Setenv(spireSocketEnv, filepath.Join(t.TempDir(), "none.sock"))
	out, err = runCLI(t, "admin", "status")
	require.Error(t, err)
	require.True(t, strings.HasPrefix(out, "spire: ERROR spireadmin: SPIRE server socket "), out)
	require.ErrorContains(t, err, "none.sock")
}

// With --server-address, the SPIRE section says which authority signed
// hallmark-server's SVID and whether the current bundle trusts it.
func TestAdminStatusServerSVID(t *testing.T) {
	fake := spiretest.Start(t)
	a := fake.ActiveID()
	const id = "spiffe://example.org/hallmark/server"
	moved := fake.ServeSVID(t, id) // re-issued after activate, as taint makes SPIRE do
	stale := fake.ServeSVID(t, id) // never re-issued
	status := func(addr string) string {
		t.Helper()
		out, err := runCLI(t, "admin", "status", "--spire-socket", fake.Socket, "--server-address", addr)
		require.NoError(t, err)
		return out
	}
	rotate := func(step string) {
		t.Helper()
		_, err := runCLI(t, "admin", "rotate", "spire", step, "--spire-socket", fake.Socket)
		require.NoError(t, err)
	}
	require.Contains(t, status(moved.Addr), "hallmark-server "+moved.Addr+": SVID "+id+" serial ")
	require.Contains(t, status(moved.Addr), "signed by "+a+" (active), trusted by the bundle")

	rotate("prepare")
	rotate("activate")
	b := fake.ActiveID()
	require.Contains(t, status(moved.Addr), "signed by "+a+" (old), trusted by the bundle")
	require.NoError(t, moved.Reissue(id))
	require.Contains(t, status(moved.Addr), "signed by "+b+" (active), trusted by the bundle")

	rotate("taint")
	rotate("revoke")
	require.Contains(t, status(moved.Addr), "signed by "+b+" (active), trusted by the bundle")
	require.Contains(t, status(stale.Addr), "signed by "+a+" (old), NOT trusted by the current bundle")

	out, err := runCLI(t, "admin", "status", "--json", "--spire-socket", fake.Socket, "--server-address", stale.Addr)
	require.NoError(t, err)
	var st struct {
		SPIRE struct {
			ServerSVID struct {
				SignedBy string `json:"signed_by"`
				Role     string
				Trusted  bool
			} `json:"server_svid"`
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, a, st.SPIRE.ServerSVID.SignedBy)
	require.Equal(t, "old", st.SPIRE.ServerSVID.Role)
	require.False(t, st.SPIRE.ServerSVID.Trusted)

	require.Contains(t, status("127.0.0.1:1"), "hallmark-server 127.0.0.1:1: cannot read its SVID: ")
}
