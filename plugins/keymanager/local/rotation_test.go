package local

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hallmark-dev/hallmark/plugins/keymanager"
)

var ctx = context.Background()

func issuers(t *testing.T, km *KeyManager) []keymanager.Issuer {
	t.Helper()
	list, err := km.Issuers(ctx)
	require.NoError(t, err)
	return list
}

// flags summarizes issuers as "A" (active), "R" (revoked) or "-".
func flags(t *testing.T, km *KeyManager) []string {
	t.Helper()
	var out []string
	for _, iss := range issuers(t, km) {
		switch {
		case iss.Active && iss.Revoked:
			out = append(out, "A+R")
		case iss.Active:
			out = append(out, "A")
		case iss.Revoked:
			out = append(out, "R")
		default:
			out = append(out, "-")
		}
	}
	return out
}

// signedBy signs a fresh CSR and checks that the chain is the leaf and
// root, that it verifies against root, and against no other.
func requireSignsWith(t *testing.T, km *KeyManager, root *x509.Certificate, others ...*x509.Certificate) {
	t.Helper()
	_, csr := newCSR(t, nil)
	chain, err := km.SignCSR(ctx, csr, agentID, time.Minute)
	require.NoError(t, err)
	require.Len(t, chain, 2)
	require.Equal(t, root.Raw, chain[1].Raw)
	verify := func(r *x509.Certificate) error {
		pool := x509.NewCertPool()
		pool.AddCert(r)
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}})
		return err
	}
	require.NoError(t, verify(root))
	for _, o := range others {
		require.Error(t, verify(o), "the leaf must not chain to another issuer")
	}
}

func idOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:16])
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	km := newKM(t, dir)
	first := issuers(t, km)
	require.Len(t, first, 1)
	old := first[0]
	require.True(t, old.Active)
	require.False(t, old.Revoked)
	require.Equal(t, idOf(caCert(t, km)), old.ID, "ID: hex of the first 16 bytes of the SHA-256 of the DER")
	require.Len(t, old.ID, 32)
	oldRoot := old.Chain[0]

	// prepare: a new CA, published (Roots) but not signing.
	next, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	require.False(t, next.Active)
	require.False(t, next.Revoked)
	require.Len(t, next.Chain, 1)
	newRoot := next.Chain[0]
	require.Equal(t, idOf(newRoot), next.ID)
	require.NotEqual(t, old.ID, next.ID)
	require.True(t, newRoot.IsCA)
	require.Equal(t, "Hallmark local signing CA", newRoot.Subject.CommonName)
	require.Equal(t, now.Add(DefaultCATTL), newRoot.NotAfter)
	require.NoError(t, newRoot.CheckSignatureFrom(newRoot))
	require.Equal(t, []string{"A", "-"}, flags(t, km), "oldest first")
	roots, err := km.Roots(ctx)
	require.NoError(t, err)
	require.Equal(t, []*x509.Certificate{oldRoot, newRoot}, roots)
	requireSignsWith(t, km, oldRoot, newRoot)

	// activate: new certificates come from it.
	require.NoError(t, km.ActivateIssuer(ctx, next.ID))
	require.Equal(t, []string{"-", "A"}, flags(t, km))
	requireSignsWith(t, km, newRoot, oldRoot)
	require.NoError(t, km.ActivateIssuer(ctx, next.ID), "activating the active issuer is a no-op")

	// revoke: the old key is destroyed, its certificate kept.
	require.NoError(t, km.RevokeIssuer(ctx, old.ID))
	require.Equal(t, []string{"R", "A"}, flags(t, km))
	require.NoFileExists(t, filepath.Join(dir, keyFile))
	require.FileExists(t, filepath.Join(dir, certFile))
	roots, err = km.Roots(ctx)
	require.NoError(t, err)
	require.Equal(t, []*x509.Certificate{newRoot}, roots, "revoked issuers are not roots")
	requireSignsWith(t, km, newRoot, oldRoot)
	require.NoError(t, km.RevokeIssuer(ctx, old.ID), "revoking twice is a no-op")

	// restart: same issuers, same active one.
	again := newKM(t, dir)
	require.Equal(t, issuers(t, km), issuers(t, again))
	requireSignsWith(t, again, newRoot, oldRoot)

	// A third rotation from the restarted key manager.
	third, err := again.PrepareIssuer(ctx)
	require.NoError(t, err)
	require.NoError(t, again.ActivateIssuer(ctx, third.ID))
	require.NoError(t, again.RevokeIssuer(ctx, next.ID))
	require.Equal(t, []string{"R", "R", "A"}, flags(t, again))
	requireSignsWith(t, again, third.Chain[0], newRoot, oldRoot)
	require.Equal(t, []string{"R", "R", "A"}, flags(t, newKM(t, dir)))
}

func TestRestartKeepsPreparedIssuerInactive(t *testing.T) {
	dir := t.TempDir()
	km := newKM(t, dir)
	next, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	again := newKM(t, dir)
	require.Equal(t, []string{"A", "-"}, flags(t, again))
	requireSignsWith(t, again, issuers(t, km)[0].Chain[0], next.Chain[0])
	require.NoError(t, again.ActivateIssuer(ctx, next.ID))
	requireSignsWith(t, again, next.Chain[0])
}

func TestRotationRefusals(t *testing.T) {
	km := newKM(t, t.TempDir())
	active := issuers(t, km)[0].ID
	revoked, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	require.NoError(t, km.RevokeIssuer(ctx, revoked.ID))
	tests := []struct {
		name    string
		op      func() error
		wantIs  error
		wantMsg string
	}{
		{"activate an unknown issuer", func() error { return km.ActivateIssuer(ctx, "0123") }, keymanager.ErrUnknownIssuer, `local: activate issuer "0123": keymanager: unknown issuer`},
		{"activate an empty id", func() error { return km.ActivateIssuer(ctx, "") }, keymanager.ErrUnknownIssuer, "unknown issuer"},
		{"revoke an unknown issuer", func() error { return km.RevokeIssuer(ctx, "0123") }, keymanager.ErrUnknownIssuer, `local: revoke issuer "0123": keymanager: unknown issuer`},
		{"revoke the active issuer", func() error { return km.RevokeIssuer(ctx, active) }, nil, "it is the active issuer; activate another one first"},
		{"activate a revoked issuer", func() error { return km.ActivateIssuer(ctx, revoked.ID) }, nil, "it is revoked and can never sign again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			require.ErrorContains(t, err, tt.wantMsg)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			} else {
				require.NotErrorIs(t, err, keymanager.ErrUnknownIssuer)
			}
			require.Equal(t, []string{"A", "R"}, flags(t, km), "nothing changed")
		})
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = km.PrepareIssuer(canceled)
	require.ErrorIs(t, err, context.Canceled)
}

// A data directory from before rotation (ca.key and ca.pem only) keeps its
// CA, which becomes the first and active issuer.
func TestLegacyLayoutUpgraded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "local")
	require.NoError(t, os.Mkdir(dir, 0o700))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "Hallmark local signing CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour * 24),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	require.NoError(t, os.WriteFile(filepath.Join(dir, certFile), certPEM, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, keyFile), keyPEM, 0o600))

	km := newKM(t, dir)
	list := issuers(t, km)
	require.Len(t, list, 1)
	legacy, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	require.Equal(t, idOf(legacy), list[0].ID)
	require.True(t, list[0].Active)
	require.Equal(t, der, list[0].Chain[0].Raw)
	requireSignsWith(t, km, legacy)

	require.ElementsMatch(t, []string{certFile, keyFile, stateFile}, dirNames(t, dir))
	require.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, stateFile)))
	for file, want := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		got, err := os.ReadFile(filepath.Join(dir, file))
		require.NoError(t, err)
		require.Equal(t, want, got, "%s untouched", file)
	}
	var st state
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &st))
	require.Equal(t, state{Version: 1, Active: idOf(legacy), Issuers: []stateIssuer{{ID: idOf(legacy), Legacy: true}}}, st)

	// And rotates away from it like any other issuer.
	next, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	require.NoError(t, km.ActivateIssuer(ctx, next.ID))
	require.NoError(t, km.RevokeIssuer(ctx, list[0].ID))
	require.Equal(t, []string{"R", "A"}, flags(t, newKM(t, dir)), "a revoked legacy CA is not mistaken for an interrupted first start")
	require.Equal(t, certPEM, must(os.ReadFile(filepath.Join(dir, certFile))), "ca.pem is kept")
}

func TestRotationFilePermissions(t *testing.T) {
	dir := t.TempDir()
	km := newKM(t, dir)
	next, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	sub := filepath.Join(dir, issuerDir)
	require.Equal(t, os.FileMode(0o700), mode(t, dir))
	require.Equal(t, os.FileMode(0o700), mode(t, sub))
	require.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(sub, next.ID+".key")))
	require.Equal(t, os.FileMode(0o644), mode(t, filepath.Join(sub, next.ID+".pem")), "CA certificates are public")
	require.Equal(t, os.FileMode(0o600), mode(t, filepath.Join(dir, stateFile)))
	require.ElementsMatch(t, []string{next.ID + ".key", next.ID + ".pem"}, dirNames(t, sub), "no temporary files left behind")
	require.ElementsMatch(t, []string{keyFile, certFile, stateFile, issuerDir}, dirNames(t, dir))

	// A loosened issuers directory is restricted again by the next prepare,
	// and a loosened key is refused at start.
	require.NoError(t, os.Chmod(sub, 0o755))
	_, err = km.PrepareIssuer(ctx)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), mode(t, sub))
	require.NoError(t, os.Chmod(filepath.Join(sub, next.ID+".key"), 0o640))
	_, err = New(Config{Dir: dir, Now: fixedClock(now)})
	require.ErrorContains(t, err, "is accessible by group or others")

	// Revoking destroys the key file.
	require.NoError(t, os.Chmod(filepath.Join(sub, next.ID+".key"), 0o600))
	require.NoError(t, km.RevokeIssuer(ctx, next.ID))
	require.NoFileExists(t, filepath.Join(sub, next.ID+".key"))
	require.FileExists(t, filepath.Join(sub, next.ID+".pem"))
}

// SignCSR never blocks on, nor tears during, a change of active issuer:
// every chain it returns is a leaf verified by the CA beside it.
func TestSignCSRDuringActivation(t *testing.T) {
	km := newKM(t, t.TempDir())
	a := issuers(t, km)[0]
	b, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	known := map[string]bool{string(a.Chain[0].Raw): true, string(b.Chain[0].Raw): true}
	_, csr := newCSR(t, nil)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	seen := make([]map[string]bool, 4)
	for w := range 4 {
		seen[w] = map[string]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				chain, err := km.SignCSR(ctx, csr, agentID, time.Minute)
				if err == nil {
					err = chain[0].CheckSignatureFrom(chain[1])
				}
				if err != nil {
					errs <- err
					return
				}
				seen[w][string(chain[1].Raw)] = true
			}
		}()
	}
	for i := range 40 {
		id := a.ID
		if i%2 == 0 {
			id = b.ID
		}
		require.NoError(t, km.ActivateIssuer(ctx, id))
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	all := map[string]bool{}
	for _, s := range seen {
		for k := range s {
			require.True(t, known[k], "signed by an unknown CA")
			all[k] = true
		}
	}
	require.Len(t, all, 2, "both issuers signed while activation flipped")
}

func TestNewRefusesBadState(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(t *testing.T, dir string, old, next string)
		wantErr string
	}{
		{
			name:    "state not JSON",
			breakIt: func(t *testing.T, dir, _, _ string) { writeState(t, dir, []byte("{")) },
			wantErr: "local: parse issuers.json",
		},
		{
			name:    "unknown version",
			breakIt: func(t *testing.T, dir, old, _ string) { writeStateOf(t, dir, state{Version: 2, Active: old}) },
			wantErr: "unsupported version 2",
		},
		{
			name: "active issuer not listed",
			breakIt: func(t *testing.T, dir, old, _ string) {
				writeStateOf(t, dir, state{Version: 1, Active: "ffffffffffffffffffffffffffffffff", Issuers: []stateIssuer{{ID: old, Legacy: true}}})
			},
			wantErr: `active issuer "ffffffffffffffffffffffffffffffff" is not listed`,
		},
		{
			name: "active issuer revoked",
			breakIt: func(t *testing.T, dir, old, _ string) {
				writeStateOf(t, dir, state{Version: 1, Active: old, Issuers: []stateIssuer{{ID: old, Legacy: true, RevokedAt: &now}}})
			},
			wantErr: "is revoked",
		},
		{
			name: "an id that is a path",
			breakIt: func(t *testing.T, dir, old, _ string) {
				writeStateOf(t, dir, state{Version: 1, Active: old, Issuers: []stateIssuer{{ID: old, Legacy: true}, {ID: "../../etc/x"}}})
			},
			wantErr: `invalid or repeated issuer id "../../etc/x"`,
		},
		{
			name: "a repeated id",
			breakIt: func(t *testing.T, dir, old, _ string) {
				writeStateOf(t, dir, state{Version: 1, Active: old, Issuers: []stateIssuer{{ID: old, Legacy: true}, {ID: old, Legacy: true}}})
			},
			wantErr: "invalid or repeated issuer id",
		},
		{
			name: "a certificate that is not the issuer's",
			breakIt: func(t *testing.T, dir, _, next string) {
				sub := filepath.Join(dir, issuerDir)
				for from, to := range map[string]string{certFile: next + ".pem", keyFile: next + ".key"} {
					require.NoError(t, os.WriteFile(filepath.Join(sub, to), must(os.ReadFile(filepath.Join(dir, from))), 0o600))
				}
			},
			wantErr: "holds the certificate of issuer OLD, not NEXT",
		},
		{
			name: "the key of a live issuer missing",
			breakIt: func(t *testing.T, dir, _, next string) {
				require.NoError(t, os.Remove(filepath.Join(dir, issuerDir, next+".key")))
			},
			wantErr: "is not revoked but its key",
		},
		{
			name:    "issuers directory without state",
			breakIt: func(t *testing.T, dir, _, _ string) { require.NoError(t, os.Remove(filepath.Join(dir, stateFile))) },
			wantErr: "issuers.json is missing: refusing to guess which CA is active",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			km := newKM(t, dir)
			old := issuers(t, km)[0].ID
			next, err := km.PrepareIssuer(ctx)
			require.NoError(t, err)
			tt.breakIt(t, dir, old, next.ID)
			want := strings.NewReplacer("OLD", old, "NEXT", next.ID).Replace(tt.wantErr)
			km, err = New(Config{Dir: dir, Now: fixedClock(now)})
			require.ErrorContains(t, err, want)
			require.Nil(t, km)
		})
	}
}

// A crash between recording a revocation and removing the key is finished
// at the next start.
func TestNewFinishesInterruptedRevocation(t *testing.T) {
	dir := t.TempDir()
	km := newKM(t, dir)
	next, err := km.PrepareIssuer(ctx)
	require.NoError(t, err)
	keyPath := filepath.Join(dir, issuerDir, next.ID+".key")
	keyPEM, err := os.ReadFile(keyPath)
	require.NoError(t, err)
	require.NoError(t, km.RevokeIssuer(ctx, next.ID))
	require.NoError(t, os.WriteFile(keyPath, keyPEM, 0o600)) // as if the removal never happened

	again := newKM(t, dir)
	require.Equal(t, []string{"A", "R"}, flags(t, again))
	require.NoFileExists(t, keyPath)
}

func writeState(t *testing.T, dir string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, stateFile), data, 0o600))
}

func writeStateOf(t *testing.T, dir string, st state) {
	t.Helper()
	data, err := json.Marshal(st)
	require.NoError(t, err)
	writeState(t, dir, data)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// BenchmarkSignCSR measures the hot path; the parallel variant flips the
// active issuer meanwhile, which must not slow signing down.
func BenchmarkSignCSR(b *testing.B) {
	km, err := New(Config{Dir: b.TempDir(), Now: fixedClock(now)})
	require.NoError(b, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(b, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	require.NoError(b, err)
	csr, err := x509.ParseCertificateRequest(der)
	require.NoError(b, err)
	b.Run("sequential", func(b *testing.B) {
		for b.Loop() {
			if _, err := km.SignCSR(ctx, csr, agentID, time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel while activating", func(b *testing.B) {
		first, err := km.Issuers(ctx)
		require.NoError(b, err)
		next, err := km.PrepareIssuer(ctx)
		require.NoError(b, err)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				id := first[0].ID
				if i%2 == 0 {
					id = next.ID
				}
				if err := km.ActivateIssuer(ctx, id); err != nil {
					panic(err)
				}
			}
		}()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := km.SignCSR(ctx, csr, agentID, time.Minute); err != nil {
					panic(err)
				}
			}
		})
		close(stop)
		<-done
	})
}
