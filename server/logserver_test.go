package server

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	dssepb "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	rekorpb "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	trustrootpb "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/tlog"
	"github.com/hallmark-dev/hallmark/attest/trust"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
)

// logServer is a Server whose transparency log runs, as Run sets it up.
type logServer struct {
	s    *Server
	tl   *TransparencyLog
	cfg  Config
	stop func()
}

func newLogServer(t *testing.T, km KeyManager) *logServer {
	t.Helper()
	return newLogServerAt(t, km, nil)
}

// newLogServerAt is newLogServer with the server's clock (nil: time.Now).
func newLogServerAt(t *testing.T, km KeyManager, now func() time.Time) *logServer {
	t.Helper()
	cfg := Config{
		Now:           now,
		ListenAddress: DefaultListenAddress, DataDir: t.TempDir(), WorkloadAPIAddr: DefaultWorkloadAPISocket,
		TrustDomain: exampleTD, AgentPathPrefix: DefaultAgentPathPrefix,
		CertificateTTL: DefaultCertificateTTL, MaxConnectionAge: DefaultMaxConnectionAge,
		KeyManager: KeyManagerConfig{Name: "fake", build: func(pluginDeps) (KeyManager, error) { return km, nil }},
	}
	s, err := New(cfg)
	require.NoError(t, err)
	tl, st, err := s.openLog(context.Background())
	require.NoError(t, err)
	s.tlog = tl
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tl.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-done)
			require.NoError(t, st.Close())
		}
	}
	t.Cleanup(stop)
	return &logServer{s: s, tl: tl, cfg: s.cfg, stop: stop}
}

// chainKeyManager issues from an intermediate under a root.
func chainKeyManager(t *testing.T, root, inter *testCA) *fakeKeyManager {
	return &fakeKeyManager{sign: func(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
		tmpl := leafTemplate(id)
		tmpl.NotAfter = tmpl.NotBefore.Add(ttl)
		return []*x509.Certificate{inter.issue(t, tmpl, csr.PublicKey), inter.cert, root.cert}, nil
	}}
}

func TestSubmitEntriesRPC(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	inter := root.intermediate(t, "issuing CA")
	km := chainKeyManager(t, root, inter)
	ls := newLogServer(t, km)
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}

	// A certificate from the CA the server has not issued with yet.
	key := newP256(t)
	early := testAgent{id: agentID, key: key, cert: inter.issue(t, leafTemplate(agentID), key.Public())}
	resp, err := svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{logSubmission(early.submit(t, "early"))}})
	require.NoError(t, err)
	require.Contains(t, resp.GetResults()[0].GetError(), "no signing CA")
	require.Empty(t, resp.GetResults()[0].GetTlogEntry())

	// Issuance records the chain before the certificate leaves the server.
	issued, err := svc.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: makeCSR(t, key, nil)})
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(issued.GetCertificateChain()[0])
	require.NoError(t, err)
	agent := testAgent{id: agentID, key: key, cert: leaf}

	subs := []Submission{agent.submit(t, "a1"), early.submit(t, "early, again"), {Envelope: []byte("{"), Certificate: leaf.Raw}}
	req := &serverv1.SubmitEntriesRequest{}
	for _, s := range subs {
		req.Entries = append(req.Entries, logSubmission(s))
	}
	resp, err = svc.SubmitEntries(ctx, req)
	require.NoError(t, err)
	require.Len(t, resp.GetResults(), 3)
	for i, r := range resp.GetResults()[:2] {
		require.Empty(t, r.GetError())
		var te rekorpb.TransparencyLogEntry
		require.NoError(t, protojson.Unmarshal(r.GetTlogEntry(), &te))
		checkEntry(t, ls.tl, &te, subs[i])
	}
	require.Contains(t, resp.GetResults()[2].GetError(), "envelope")

	// Malformed entries among good ones: each is refused on its own, with
	// its reason; the good ones are logged; the call succeeds.
	otherKey := newP256(t)
	wrongKey, err := attest.SignEnvelope(statement("wrong key"), otherKey)
	require.NoError(t, err)
	malformed := []*serverv1.LogSubmission{
		nil,
		{},
		{Envelope: []byte("\xff\xfe not UTF-8"), Certificate: leaf.Raw},
		{Envelope: []byte(`{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AAAA"}]}`), Certificate: leaf.Raw},
		{Envelope: []byte(`{"payload":"!!","payloadType":"x","signatures":[]}`), Certificate: leaf.Raw},
		{Envelope: logSubmission(agent.submit(t, "garbage certificate")).GetEnvelope(), Certificate: []byte("not DER")},
		{Envelope: logSubmission(agent.submit(t, "CA certificate")).GetEnvelope(), Certificate: inter.cert.Raw},
		logSubmission(submission(t, wrongKey, leaf)),
		logSubmission(submission(t, agent.sign(t, []byte(`{"not":"a statement"}`)), leaf)),
		{Envelope: make([]byte, MaxEnvelopeSize+1), Certificate: leaf.Raw},
	}
	mixed := &serverv1.SubmitEntriesRequest{}
	var good []Submission
	for i, m := range malformed {
		g := agent.submit(t, fmt.Sprintf("good %d", i))
		good = append(good, g)
		mixed.Entries = append(mixed.Entries, logSubmission(g), m)
	}
	resp, err = svc.SubmitEntries(ctx, mixed)
	require.NoError(t, err, "malformed entries never fail the call")
	require.Len(t, resp.GetResults(), 2*len(malformed))
	for i, r := range resp.GetResults() {
		if i%2 == 0 {
			require.Empty(t, r.GetError(), "good entry %d", i/2)
			var te rekorpb.TransparencyLogEntry
			require.NoError(t, protojson.Unmarshal(r.GetTlogEntry(), &te))
			checkEntry(t, ls.tl, &te, good[i/2])
			continue
		}
		require.NotEmpty(t, r.GetError(), "malformed entry %d", i/2)
		require.Empty(t, r.GetTlogEntry())
	}

	// Call-level refusals.
	tooMany := &serverv1.SubmitEntriesRequest{Entries: make([]*serverv1.LogSubmission, MaxSubmitEntries+1)}
	_, err = svc.SubmitEntries(ctx, tooMany)
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = (&agentService{s: ls.s, km: km}).SubmitEntries(ctx, req)
	require.Equal(t, codes.Unavailable, status.Code(err))
	ls.stop()
	_, err = svc.SubmitEntries(ctx, &serverv1.SubmitEntriesRequest{Entries: []*serverv1.LogSubmission{logSubmission(agent.submit(t, "after stop"))}})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
}

func logSubmission(s Submission) *serverv1.LogSubmission {
	return &serverv1.LogSubmission{Envelope: s.Envelope, Certificate: s.Certificate}
}

func TestSubmitEntriesIsForAgentsOnly(t *testing.T) {
	s, _ := newAuthzServer(t)
	p := s.policy()
	allowed, ok := p[serverv1.AgentService_SubmitEntries_FullMethodName]
	require.True(t, ok)
	require.True(t, allowed(agentID))
	require.False(t, allowed(spiffeid.RequireFromString("spiffe://example.org/ci/builder")))
	require.False(t, allowed(foreignID))
}

func TestOpenLogKeyAndFiles(t *testing.T) {
	ls := newLogServer(t, &fakeKeyManager{})
	keyDir := filepath.Join(ls.cfg.DataDir, "log")
	for name, want := range map[string]os.FileMode{keyDir: 0o700, filepath.Join(keyDir, "key"): 0o600, filepath.Join(ls.cfg.DataDir, DefaultStoreFile): 0o600} {
		info, err := os.Stat(name)
		require.NoError(t, err, name)
		require.Equal(t, want, info.Mode().Perm(), name)
	}
	pub := ls.tl.PublicKey()
	ls.stop()

	// The same key on restart.
	s2, err := New(ls.cfg)
	require.NoError(t, err)
	tl, st, err := s2.openLog(context.Background())
	require.NoError(t, err)
	require.Equal(t, pub, tl.PublicKey())
	require.NoError(t, st.Close())

	// A log without its key does not start, and gets no new key.
	require.NoError(t, os.Remove(filepath.Join(keyDir, "key")))
	s3, err := New(ls.cfg)
	require.NoError(t, err)
	_, _, err = s3.openLog(context.Background())
	require.ErrorContains(t, err, "key")
	require.ErrorContains(t, err, "is missing")
	_, err = os.Stat(filepath.Join(keyDir, "key"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestLogKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log", "key")
	created := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	_, err := loadLogKey(path, false, created)
	require.ErrorIs(t, err, errNoLogKey)
	k, err := loadLogKey(path, true, created.Add(500*time.Millisecond))
	require.NoError(t, err)
	require.Equal(t, created, k.created)
	again, err := loadLogKey(path, true, time.Now())
	require.NoError(t, err)
	require.Equal(t, k, again)

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotContains(t, string(data), "Ed25519", "PKCS #8 PEM only")
	require.Contains(t, string(data), "Created: 2030-05-06T07:08:09Z")

	require.NoError(t, os.Chmod(path, 0o640))
	_, err = loadLogKey(path, true, time.Now())
	require.ErrorContains(t, err, "chmod 600")
}

func httpGet(t *testing.T, url string) (int, string, []byte) {
	t.Helper()
	resp, err := http.Get(url) //nolint:noctx // test
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

func TestLogHTTP(t *testing.T) {
	ctx := withCaller(context.Background(), agentID)
	root := newTestCA(t, "root CA")
	inter := root.intermediate(t, "issuing CA")
	other := newTestCA(t, "another root")
	km := chainKeyManager(t, root, inter)
	ls := newLogServer(t, km)
	svc := &agentService{s: ls.s, km: km, tlog: ls.tl}
	require.NoError(t, ls.tl.RecordSigningCA(ctx, []*x509.Certificate{other.cert}))

	key := newP256(t)
	issued, err := svc.IssueSigningCertificate(ctx, &serverv1.IssueSigningCertificateRequest{Csr: makeCSR(t, key, nil)})
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(issued.GetCertificateChain()[0])
	require.NoError(t, err)
	agent := testAgent{id: agentID, key: key, cert: leaf}

	// 105 entries name "common"; one also names "rare".
	var subs []Submission
	for i := range 105 {
		names := []string{"common", fmt.Sprintf("only-%d", i)}
		if i == 7 {
			names = append(names, "rare", "rare") // a repeated subject is indexed once
		}
		subs = append(subs, agent.submit(t, names...))
	}
	for i := 0; i < len(subs); i += 50 {
		res, err := ls.tl.Submit(ctx, agentID, subs[i:min(i+50, len(subs))])
		require.NoError(t, err)
		for _, r := range res {
			require.NoError(t, r.Refusal)
		}
	}

	mux := http.NewServeMux()
	ls.tl.registerHTTP(mux, zap.NewNop())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// The trusted root names the CAs and the log; a verifier builds the
	// checkpoint verifier from it alone.
	code, ctype, body := httpGet(t, srv.URL+"/trust/trusted_root.json")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "application/json", ctype)
	var tr trustrootpb.TrustedRoot
	require.NoError(t, protojson.Unmarshal(body, &tr))
	require.Equal(t, trust.MediaType, tr.GetMediaType())
	require.Contains(t, string(body), `"ctlogs": []`, "written although empty: strict parsers require it")
	require.Len(t, tr.GetTlogs(), 1)
	tl := tr.GetTlogs()[0]
	require.Equal(t, "https://hallmark.example.org", tl.GetBaseUrl())
	require.Equal(t, protocommon.HashAlgorithm_SHA2_256, tl.GetHashAlgorithm())
	require.Equal(t, protocommon.PublicKeyDetails_PKIX_ED25519, tl.GetPublicKey().GetKeyDetails())
	require.NotNil(t, tl.GetPublicKey().GetValidFor().GetStart())
	pubAny, err := x509.ParsePKIXPublicKey(tl.GetPublicKey().GetRawBytes())
	require.NoError(t, err)
	pub := pubAny.(ed25519.PublicKey)
	origin := strings.TrimPrefix(tl.GetBaseUrl(), "https://")
	require.Equal(t, tlog.KeyID(origin, pub), tl.GetLogId().GetKeyId(), "the log ID is the C2SP key ID")

	require.Len(t, tr.GetCertificateAuthorities(), 2)
	byRoot := map[string]*trustrootpb.CertificateAuthority{}
	for _, ca := range tr.GetCertificateAuthorities() {
		certs := ca.GetCertChain().GetCertificates()
		byRoot[string(certs[len(certs)-1].GetRawBytes())] = ca
	}
	chainCA := byRoot[string(root.cert.Raw)]
	require.NotNil(t, chainCA)
	require.Equal(t, [][]byte{inter.cert.Raw, root.cert.Raw}, [][]byte{chainCA.GetCertChain().GetCertificates()[0].GetRawBytes(), chainCA.GetCertChain().GetCertificates()[1].GetRawBytes()})
	require.Equal(t, "root CA", chainCA.GetSubject().GetCommonName())
	require.Equal(t, inter.cert.NotBefore.Unix(), chainCA.GetValidFor().GetStart().AsTime().Unix(), "the latest NotBefore of the chain")
	require.Equal(t, root.cert.NotAfter.Unix(), chainCA.GetValidFor().GetEnd().AsTime().Unix())
	require.NotNil(t, byRoot[string(other.cert.Raw)])

	// bundle.pem: every CA certificate once.
	code, _, body = httpGet(t, srv.URL+"/trust/bundle.pem")
	require.Equal(t, http.StatusOK, code)
	var pemCerts [][]byte
	for rest := body; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		pemCerts = append(pemCerts, b.Bytes)
	}
	require.ElementsMatch(t, [][]byte{inter.cert.Raw, root.cert.Raw, other.cert.Raw}, pemCerts)

	// The checkpoint verifies with what the trusted root says.
	code, ctype, body = httpGet(t, srv.URL+"/log/checkpoint")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, ctype, "text/plain")
	head, err := tlog.OpenCheckpoint(body, origin, pub)
	require.NoError(t, err)
	require.Equal(t, uint64(105), head.Size)

	// Entries by subject digest, paged, each with what rebuilds a bundle.
	fetch := func(query string) entriesJSON {
		code, _, body := httpGet(t, srv.URL+"/log/entries?"+query)
		require.Equal(t, http.StatusOK, code, string(body))
		var out entriesJSON
		require.NoError(t, json.Unmarshal(body, &out))
		return out
	}
	checkPage := func(page entriesJSON) []int64 {
		var idx []int64
		for _, e := range page.Entries {
			var te rekorpb.TransparencyLogEntry
			require.NoError(t, protojson.Unmarshal(e.TlogEntry, &te))
			var env dssepb.Envelope
			require.NoError(t, protojson.Unmarshal(e.DSSEEnvelope, &env))
			cp := checkEntry(t, ls.tl, &te, Submission{Envelope: e.DSSEEnvelope, Certificate: e.Certificate})
			require.Equal(t, head, cp, "proved against the latest checkpoint")
			require.Equal(t, agentID.String(), e.SPIFFEID)
			idx = append(idx, te.GetLogIndex())
		}
		return idx
	}
	page := fetch("digest=sha256:" + digestOf("common"))
	require.Len(t, page.Entries, maxEntriesPerPage)
	require.NotNil(t, page.Next)
	require.Equal(t, uint64(100), *page.Next)
	first := checkPage(page)
	require.Equal(t, int64(0), first[0])
	page = fetch(fmt.Sprintf("digest=sha256:%s&start=%d", digestOf("common"), *page.Next))
	require.Equal(t, []int64{100, 101, 102, 103, 104}, checkPage(page))
	require.NotNil(t, page.Next, "a page cut by bytes looks like the last: every non-empty page says where to go on")
	page = fetch(fmt.Sprintf("digest=sha256:%s&start=%d", digestOf("common"), *page.Next))
	require.Empty(t, page.Entries)
	require.Nil(t, page.Next)
	page = fetch("digest=sha256:" + digestOf("rare"))
	require.Equal(t, []int64{7}, checkPage(page))
	page = fetch("digest=sha256:" + digestOf("nothing"))
	require.Empty(t, page.Entries)
	require.NotNil(t, page.Entries, "an empty list, not null")

	// Consistency proofs.
	var cons consistencyJSON
	code, _, body = httpGet(t, srv.URL+"/log/proof/consistency?from=50&to=105")
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(body, &cons))
	require.Equal(t, consistencyJSON{From: 50, To: 105, Hashes: cons.Hashes}, cons)
	var leaves [][]byte
	for i := range int64(105) {
		e, err := ls.tl.store.EntriesByDedupeKey(context.Background(), [][]byte{dedupeKeyOf(t, subs[i])})
		require.NoError(t, err)
		require.Len(t, e, 1)
		require.Equal(t, uint64(i), e[0].Index)
		leaves = append(leaves, e[0].LeafHash)
	}
	require.NoError(t, tlog.VerifyConsistency(50, 105, cons.Hashes, rootOfLeaves(leaves[:50]), head.Root))
	code, _, body = httpGet(t, srv.URL+"/log/proof/consistency?from=0")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"from":0,"to":105,"hashes":[]}`, string(body))

	for _, bad := range []string{
		"/log/proof/consistency", "/log/proof/consistency?from=x", "/log/proof/consistency?from=5&to=4",
		"/log/proof/consistency?from=1&to=106", "/log/entries", "/log/entries?digest=sha1:00",
		"/log/entries?digest=sha256:abc", "/log/entries?digest=sha256:" + digestOf("x") + "&start=-1",
	} {
		code, _, _ := httpGet(t, srv.URL+bad)
		require.Equal(t, http.StatusBadRequest, code, bad)
	}
	resp, err := http.Post(srv.URL+"/log/checkpoint", "text/plain", nil) //nolint:noctx // test
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	// trust export reads the same, offline, while the server runs and
	// after it stopped.
	code, _, served := httpGet(t, srv.URL+"/trust/trusted_root.json")
	require.Equal(t, http.StatusOK, code)
	for range 2 {
		exported, err := ExportTrustedRoot(context.Background(), ls.cfg)
		require.NoError(t, err)
		var a, b trustrootpb.TrustedRoot
		require.NoError(t, protojson.Unmarshal(served, &a))
		require.NoError(t, protojson.Unmarshal(exported, &b))
		require.True(t, proto.Equal(&a, &b), "exported:\n%s\nserved:\n%s", exported, served)
		ls.stop()
	}
}

// dedupeKeyOf is the dedupe key of a submission: the leaf hash of its
// legacy body (docs/log.md).
func dedupeKeyOf(t *testing.T, s Submission) []byte {
	t.Helper()
	var env dssepb.Envelope
	require.NoError(t, protojson.Unmarshal(s.Envelope, &env))
	body, err := tlog.NewLegacyBody(&env, s.Certificate)
	require.NoError(t, err)
	return tlog.LeafHash(body)
}

func TestExportTrustedRootOffline(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)), noEnv)
	require.NoError(t, err)
	_, err = ExportTrustedRoot(context.Background(), cfg)
	require.ErrorContains(t, err, "no log key")
	_, err = os.Stat(filepath.Join(dir, DefaultStoreFile))
	require.True(t, errors.Is(err, os.ErrNotExist), "export creates nothing")

	ls := newLogServer(t, &fakeKeyManager{})
	ls.stop()
	cfg.DataDir = ls.cfg.DataDir
	cfg.Store = ls.cfg.Store
	out, err := ExportTrustedRoot(context.Background(), cfg)
	require.NoError(t, err)
	var tr trustrootpb.TrustedRoot
	require.NoError(t, protojson.Unmarshal(out, &tr))
	require.Empty(t, tr.GetCertificateAuthorities())
	require.Equal(t, "https://hallmark.example.org", tr.GetTlogs()[0].GetBaseUrl())

	cfg.LogOrigin = "hallmark/elsewhere"
	_, err = ExportTrustedRoot(context.Background(), cfg)
	require.ErrorContains(t, err, "does not verify with the log key and origin")
}

func TestParseConfigStoreAndLog(t *testing.T) {
	dir := t.TempDir()
	c, err := ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)), noEnv)
	require.NoError(t, err)
	require.Equal(t, "sqlite", c.Store.Name)
	require.Equal(t, "hallmark.example.org", c.LogOrigin)
	st, err := c.Store.open(context.Background(), storeOptions{})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	require.FileExists(t, filepath.Join(dir, DefaultStoreFile))

	dbPath := filepath.Join(t.TempDir(), "elsewhere", "log.db")
	c, err = ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)+`
store "sqlite" {
  path = "`+dbPath+`"
}
log {
  origin = "hallmark-log.ci.example.org"
}
`), noEnv)
	require.NoError(t, err)
	require.Equal(t, "hallmark-log.ci.example.org", c.LogOrigin)
	st, err = c.Store.open(context.Background(), storeOptions{})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	require.FileExists(t, dbPath)

	for _, tt := range []struct {
		name, extra string
		wantErr     []string
	}{
		{name: "unknown store", extra: `store "mysql" {}`, wantErr: []string{`store "mysql": unknown (built in: postgres, sqlite)`}},
		{name: "unknown key in the store block", extra: "store \"sqlite\" {\n  paht = \"/x\"\n}", wantErr: []string{`"paht"`, "server.hcl:6"}},
		{name: "relative store path", extra: `store "sqlite" { path = "x.db" }`, wantErr: []string{"must be an absolute path"}},
		{name: "two stores", extra: `store "sqlite" {}` + "\n" + `store "sqlite" {}`, wantErr: []string{"only one store block"}},
		{name: "origin with a scheme", extra: `log { origin = "https://hallmark.example.org" }`, wantErr: []string{"log.origin", "host name"}},
		{name: "origin with a space", extra: `log { origin = "hallmark log" }`, wantErr: []string{"log.origin"}},
		{name: "origin with a plus", extra: `log { origin = "a+b" }`, wantErr: []string{"log.origin"}},
		{name: "unknown key in the log block", extra: "log {\n  orign = \"x\"\n}", wantErr: []string{`"orign"`}},
		{name: "two log blocks", extra: "log {}\nlog {}", wantErr: []string{"log"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("server.hcl", []byte(serverHCL(`data_dir = "`+dir+`"`)+tt.extra), noEnv)
			require.Error(t, err)
			for _, want := range tt.wantErr {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

// FuzzSubmitCheck feeds arbitrary envelopes and certificates to the
// submission checks: they refuse, never panic, and accept only what
// verifies.
func FuzzSubmitCheck(f *testing.F) {
	ca := newTestCA(f, "signing CA")
	agent := newTestAgent(f, ca, agentID)
	good := agent.submit(f, "fuzz")
	f.Add(good.Envelope, good.Certificate)
	f.Add([]byte(`{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}]}`), good.Certificate)
	f.Add([]byte(`{}`), []byte{})
	st := openStore(f, filepath.Join(f.TempDir(), "hallmark.db"))
	defer st.Close()
	l, err := NewTransparencyLog(context.Background(), TransparencyLogConfig{Store: st, Key: newLogKey(f), Origin: testOrigin, TSA: newTestTSA(f)})
	require.NoError(f, err)
	require.NoError(f, l.RecordSigningCA(context.Background(), []*x509.Certificate{ca.cert}))
	f.Fuzz(func(t *testing.T, envelope, cert []byte) {
		it, err := l.check(agentID, Submission{Envelope: envelope, Certificate: cert}, time.Now())
		var chainErr *chainError
		if err != nil && !errors.As(err, &chainErr) {
			require.Nil(t, it)
			return
		}
		require.NotNil(t, it)
		require.Len(t, it.key, 32)
		if err == nil {
			// Only a signature by the agent's key passes.
			require.Equal(t, agent.cert.Raw, cert)
		}
	})
}

// GET /log/entries bounds a page by bytes as well as by count: envelopes
// of about 1.5 MiB each come three to a 4 MiB page (always at least one),
// and every entry is reached by following next.
func TestLogEntriesPageByBytes(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "signing CA")
	agent := newTestAgent(t, ca, agentID)
	l := newTestLog(t, ca, nil)
	long := strings.Repeat("x", 3000)
	var subs []Submission
	for i := range 8 {
		names := []string{"big"}
		for j := range 500 { // 500 products with long names: ~1.5 MiB of payload, ~2 MiB as base64
			names = append(names, fmt.Sprintf("%d-%d-%s", i, j, long))
		}
		subs = append(subs, agent.submit(t, names...))
	}
	res, err := l.Submit(withCaller(ctx, agentID), agentID, subs)
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Refusal)
	}
	mux := http.NewServeMux()
	l.registerHTTP(mux, zap.NewNop())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	var got []int64
	pages := 0
	for start := uint64(0); ; pages++ {
		code, _, body := httpGet(t, fmt.Sprintf("%s/log/entries?digest=sha256:%s&start=%d", srv.URL, digestOf("big"), start))
		require.Equal(t, http.StatusOK, code)
		require.LessOrEqual(t, len(body), 2*maxPageBytes, "a page's answer stays near the byte bound")
		var page entriesJSON
		require.NoError(t, json.Unmarshal(body, &page))
		for _, e := range page.Entries {
			var te rekorpb.TransparencyLogEntry
			require.NoError(t, protojson.Unmarshal(e.TlogEntry, &te))
			got = append(got, te.GetLogIndex())
		}
		if page.Next == nil {
			require.Empty(t, page.Entries)
			break
		}
		require.NotEmpty(t, page.Entries)
		require.Less(t, len(page.Entries), 4, "cut by bytes, not by count")
		start = *page.Next
	}
	require.Equal(t, []int64{0, 1, 2, 3, 4, 5, 6, 7}, got)
	require.GreaterOrEqual(t, pages, 3)
}

// GET /log/entries with builder parameters leaves out the entries of
// every other agent, however many name the artifact: a genuine entry
// logged after another agent's 1,100 comes on the second page, after an
// empty one that examined maxScanPerPage entries and says where it
// stopped. A builder keeps agents under it at a segment boundary only; a
// parameter that is no SPIFFE ID, or more than maxBuilders of them, is
// refused.
func TestLogEntriesByBuilder(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "signing CA")
	l := newTestLog(t, ca, nil)
	rogueID := spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-10") // a lookalike of runner-1
	underID := spiffeid.RequireFromString("spiffe://example.org/hallmark/agent/runner-1/pool")
	submit := func(id spiffeid.ID, n int, names ...string) {
		agent := newTestAgent(t, ca, id)
		var subs []Submission
		for i := range n {
			subs = append(subs, agent.submit(t, append([]string{fmt.Sprintf("%s-%d", path.Base(id.Path()), i)}, names...)...))
		}
		for len(subs) > 0 {
			batch := subs[:min(len(subs), 500)]
			subs = subs[len(batch):]
			res, err := l.Submit(withCaller(ctx, id), id, batch)
			require.NoError(t, err)
			for _, r := range res {
				require.NoError(t, r.Refusal)
			}
		}
	}
	const flood = 1100
	submit(rogueID, flood, "shared")
	submit(agentID, 1, "shared")
	submit(underID, 1, "shared")
	mux := http.NewServeMux()
	l.registerHTTP(mux, zap.NewNop())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	var searchFrom func(start uint64, builders ...string) (int, []string, *uint64)
	search := func(builders ...string) (code int, ids []string, next *uint64) {
		return searchFrom(0, builders...)
	}
	searchFrom = func(start uint64, builders ...string) (code int, ids []string, next *uint64) {
		q := url.Values{"digest": {"sha256:" + digestOf("shared")}, "start": {strconv.FormatUint(start, 10)}, "builder": builders}
		code, _, body := httpGet(t, srv.URL+"/log/entries?"+q.Encode())
		if code != http.StatusOK {
			return code, nil, nil
		}
		var page entriesJSON
		require.NoError(t, json.Unmarshal(body, &page))
		for _, e := range page.Entries {
			ids = append(ids, e.SPIFFEID)
		}
		return code, ids, page.Next
	}
	code, ids, next := search(agentID.String())
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, ids, "the first %d examined are the other agent's", maxScanPerPage)
	require.Equal(t, uint64(maxScanPerPage), *next)
	_, ids, next = searchFrom(*next, agentID.String())
	require.Equal(t, []string{agentID.String(), underID.String()}, ids, "on the second page, past the other agent's %d", flood)
	require.Equal(t, uint64(flood+2), *next)
	_, ids, next = searchFrom(*next, agentID.String())
	require.Empty(t, ids)
	require.Nil(t, next, "the end")
	_, ids, _ = searchFrom(flood, agentID.String()+"/")
	require.Equal(t, []string{agentID.String(), underID.String()}, ids, "a trailing slash is the same builder")
	_, ids, _ = searchFrom(flood, underID.String())
	require.Equal(t, []string{underID.String()}, ids)
	_, ids, _ = search(rogueID.String())
	require.Len(t, ids, maxEntriesPerPage)
	require.NotContains(t, ids, agentID.String())
	_, ids, _ = search("spiffe://example.org/hallmark/agent/runner")
	require.Empty(t, ids, "runner is no segment of runner-1 or runner-10")
	_, ids, _ = search()
	require.Len(t, ids, maxEntriesPerPage, "no builder: every agent's")

	tooMany := make([]string, maxBuilders+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("spiffe://example.org/a%d", i)
	}
	for _, bad := range [][]string{{"runner-1"}, {"spiffe://Example.org/a"}, {"spiffe://example.org/a//"}, tooMany} {
		code, _, _ := search(bad...)
		require.Equal(t, http.StatusBadRequest, code, "%.80v", bad)
	}
}
