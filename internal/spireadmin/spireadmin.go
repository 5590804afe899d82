// Package spireadmin drives a SPIRE server's X.509 authority rotation through
// its LocalAuthority API (prepare, activate, taint, revoke) over the server's
// local API socket, and reads the authority state and the trust bundle that
// each step changes.
//
// Each step picks the authority it acts on from the state (activate the
// prepared one; taint and revoke the old one) unless told an ID, and refuses
// with a reason and the next step to run when the state does not allow it.
// The checks mirror SPIRE v1.13's own (pkg/server/api/localauthority/v1 and
// the datastore's taint and revoke), so a refusal names the cause before
// SPIRE answers with a bare "unexpected authority ID".
package spireadmin

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	localauthorityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/localauthority/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// DefaultSocket is spire-server's default socket_path.
const DefaultSocket = "/tmp/spire-server/private/api.sock"

// Roles of an X.509 authority, as GetX509AuthorityState reports them.
const (
	RoleActive   = "active"   // signs every new X509-SVID
	RolePrepared = "prepared" // in the bundle, signs nothing yet
	RoleOld      = "old"      // the previous active one, until the next prepare
	RoleOther    = ""         // in the bundle, in no slot (an older rotation's)
)

// Authority is one X.509 authority of the SPIRE server: its ID is the
// hex-encoded Subject Key ID of its CA certificate, which is also the
// Authority Key ID of every X509-SVID it signs.
type Authority struct {
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	// UpstreamSubjectKeyID names the upstream authority that signed it;
	// SPIRE fills it in for self-signed ones too (their own key).
	UpstreamSubjectKeyID string `json:"upstream_subject_key_id,omitempty"`
}

// BundleAuthority is one root of the trust bundle that SPIRE hands to every
// agent and workload.
type BundleAuthority struct {
	ID       string    `json:"id"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	Tainted  bool      `json:"tainted"`
	Role     string    `json:"role,omitempty"`

	cert *x509.Certificate
}

// State is the server's X.509 authorities and the bundle they publish.
type State struct {
	TrustDomain    string            `json:"trust_domain"`
	Active         *Authority        `json:"active"`
	Prepared       *Authority        `json:"prepared,omitempty"`
	Old            *Authority        `json:"old,omitempty"`
	Bundle         []BundleAuthority `json:"bundle"`
	BundleSequence uint64            `json:"bundle_sequence"`
}

// InBundle returns the bundle's entry for an authority ID.
func (s *State) InBundle(id string) (BundleAuthority, bool) {
	for _, b := range s.Bundle {
		if b.ID == id {
			return b, true
		}
	}
	return BundleAuthority{}, false
}

// Phase says where a rotation stands and what to do next.
func (s *State) Phase() (phase, next string) {
	switch {
	case s.Prepared != nil:
		return "prepared", "wait until every SPIRE agent and federated trust domain has the bundle with the prepared authority, then run activate"
	case s.Old != nil:
		b, in := s.InBundle(s.Old.ID)
		switch {
		case !in:
			return "rotated", "none: the old authority is revoked"
		case !b.Tainted:
			return "activated", "run taint, so that SPIRE agents re-issue at once every SVID the old authority signed"
		default:
			return "tainted", "once every agent and workload holds an SVID from the active authority, run revoke"
		}
	default:
		return "steady", "none; run prepare to start a rotation"
	}
}

// Client talks to a SPIRE server's local API socket.
type Client struct {
	conn   *grpc.ClientConn
	la     localauthorityv1.LocalAuthorityClient
	bundle bundlev1.BundleClient
}

// Dial prepares a client for the SPIRE server socket at path (a file path,
// or unix:// followed by one). It fails early, naming the socket, when
// nothing is there.
func Dial(path string) (*Client, error) {
	path = strings.TrimPrefix(path, "unix://")
	if path == "" {
		return nil, errors.New("spireadmin: no SPIRE server socket given")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("spireadmin: SPIRE server socket %s: %w (set socket_path of spire-server, or the socket flag)", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("spireadmin: %s is not a socket", path)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spireadmin: %w", err)
	}
	return &Client{conn: conn, la: localauthorityv1.NewLocalAuthorityClient(conn), bundle: bundlev1.NewBundleClient(conn)}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// State reads the X.509 authority slots and the bundle.
func (c *Client) State(ctx context.Context) (*State, error) {
	resp, err := c.la.GetX509AuthorityState(ctx, &localauthorityv1.GetX509AuthorityStateRequest{})
	if err != nil {
		return nil, apiErr("get X.509 authority state", err)
	}
	b, err := c.bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, apiErr("get bundle", err)
	}
	s := &State{
		TrustDomain:    b.GetTrustDomain(),
		Active:         authority(resp.GetActive()),
		Prepared:       authority(resp.GetPrepared()),
		Old:            authority(resp.GetOld()),
		BundleSequence: b.GetSequenceNumber(),
	}
	if s.Bundle, err = bundleAuthorities(b.GetX509Authorities()); err != nil {
		return nil, err
	}
	for i := range s.Bundle {
		for _, slot := range []struct {
			a    *Authority
			role string
		}{{s.Active, RoleActive}, {s.Prepared, RolePrepared}, {s.Old, RoleOld}} {
			if slot.a != nil && slot.a.ID == s.Bundle[i].ID {
				s.Bundle[i].Role = slot.role
			}
		}
	}
	return s, nil
}

// PrepareOptions tune Prepare.
type PrepareOptions struct {
	// Replace allows preparing over a prepared authority (SPIRE discards
	// it) or over an old one that is tainted but not yet revoked (it can
	// then no longer be revoked through this API).
	Replace bool
}

// Prepare creates a new X.509 authority and adds it to the bundle; it signs
// nothing until activated.
func (c *Client) Prepare(ctx context.Context, o PrepareOptions) (*Authority, error) {
	s, err := c.State(ctx)
	if err != nil {
		return nil, err
	}
	if err := CheckPrepare(s, o); err != nil {
		return nil, err
	}
	resp, err := c.la.PrepareX509Authority(ctx, &localauthorityv1.PrepareX509AuthorityRequest{})
	if err != nil {
		return nil, apiErr("prepare", err)
	}
	return authority(resp.GetPreparedAuthority()), nil
}

// Activate makes the prepared authority (or id, which must be it) the
// active one; the active one becomes old. New SVIDs are signed by the new
// authority from now on; existing ones stay valid.
func (c *Client) Activate(ctx context.Context, id string) (*Authority, error) {
	s, err := c.State(ctx)
	if err != nil {
		return nil, err
	}
	if id, err = CheckActivate(s, id); err != nil {
		return nil, err
	}
	resp, err := c.la.ActivateX509Authority(ctx, &localauthorityv1.ActivateX509AuthorityRequest{AuthorityId: id})
	if err != nil {
		return nil, apiErr("activate", err)
	}
	return authority(resp.GetActivatedAuthority()), nil
}

// Taint marks the old authority (or id, which must be it) tainted in the
// bundle: SPIRE agents re-issue every SVID it signed, at once.
func (c *Client) Taint(ctx context.Context, id string) (*Authority, error) {
	s, err := c.State(ctx)
	if err != nil {
		return nil, err
	}
	if id, err = CheckTaint(s, id); err != nil {
		return nil, err
	}
	resp, err := c.la.TaintX509Authority(ctx, &localauthorityv1.TaintX509AuthorityRequest{AuthorityId: id})
	if err != nil {
		return nil, apiErr("taint", err)
	}
	return authority(resp.GetTaintedAuthority()), nil
}

// Revoke removes the tainted old authority (or id, which must be it) from
// the bundle: nothing it signed is trusted any more.
func (c *Client) Revoke(ctx context.Context, id string) (*Authority, error) {
	s, err := c.State(ctx)
	if err != nil {
		return nil, err
	}
	if id, err = CheckRevoke(s, id); err != nil {
		return nil, err
	}
	resp, err := c.la.RevokeX509Authority(ctx, &localauthorityv1.RevokeX509AuthorityRequest{AuthorityId: id})
	if err != nil {
		return nil, apiErr("revoke", err)
	}
	a := authority(resp.GetRevokedAuthority())
	if s.Old != nil && a != nil && a.ID == s.Old.ID && a.ExpiresAt.IsZero() {
		a.ExpiresAt = s.Old.ExpiresAt // SPIRE's answer carries the ID only
	}
	return a, nil
}

// CheckPrepare says whether prepare may run in state s.
func CheckPrepare(s *State, o PrepareOptions) error {
	if o.Replace {
		return nil
	}
	if s.Prepared != nil {
		return fmt.Errorf("prepare: authority %s is already prepared; run activate, or replace it with --force", s.Prepared.ID)
	}
	if s.Old != nil {
		if b, in := s.InBundle(s.Old.ID); in && b.Tainted {
			return fmt.Errorf("prepare: old authority %s is tainted but still in the bundle; run revoke first (preparing now would make it unrevocable through this API), or --force", s.Old.ID)
		}
	}
	return nil
}

// CheckActivate says whether activate may run in state s and returns the
// authority it acts on.
func CheckActivate(s *State, id string) (string, error) {
	if s.Prepared == nil {
		if id != "" && s.Active != nil && id == s.Active.ID {
			return "", fmt.Errorf("activate: authority %s is already active", id)
		}
		return "", errors.New("activate: no prepared authority; run prepare first")
	}
	if id == "" {
		return s.Prepared.ID, nil
	}
	if id != s.Prepared.ID {
		return "", fmt.Errorf("activate: %s is not the prepared authority (prepared: %s)", id, s.Prepared.ID)
	}
	return id, nil
}

// CheckTaint says whether taint may run in state s and returns the
// authority it acts on.
func CheckTaint(s *State, id string) (string, error) {
	if s.Active != nil && id == s.Active.ID {
		return "", fmt.Errorf("taint: %s is the active authority and cannot be tainted; prepare and activate a new one first", id)
	}
	if s.Old == nil {
		if s.Prepared != nil {
			return "", fmt.Errorf("taint: no old authority; run activate first (prepared: %s)", s.Prepared.ID)
		}
		return "", errors.New("taint: no old authority; run prepare and activate first")
	}
	if id == "" {
		id = s.Old.ID
	} else if id != s.Old.ID {
		return "", fmt.Errorf("taint: %s is not the old authority (old: %s)", id, s.Old.ID)
	}
	b, in := s.InBundle(id)
	switch {
	case !in:
		return "", fmt.Errorf("taint: old authority %s is no longer in the bundle (revoked or expired)", id)
	case b.Tainted:
		return "", fmt.Errorf("taint: old authority %s is already tainted; run revoke next", id)
	}
	return id, nil
}

// CheckRevoke says whether revoke may run in state s and returns the
// authority it acts on.
func CheckRevoke(s *State, id string) (string, error) {
	if s.Active != nil && id == s.Active.ID {
		return "", fmt.Errorf("revoke: %s is the active authority and cannot be revoked", id)
	}
	if s.Old == nil {
		return "", errors.New("revoke: no old authority; run activate and taint first")
	}
	if id == "" {
		id = s.Old.ID
	} else if id != s.Old.ID {
		return "", fmt.Errorf("revoke: %s is not the old authority (old: %s)", id, s.Old.ID)
	}
	b, in := s.InBundle(id)
	switch {
	case !in:
		return "", fmt.Errorf("revoke: old authority %s is no longer in the bundle: already revoked", id)
	case !b.Tainted:
		return "", fmt.Errorf("revoke: old authority %s is not tainted; run taint first, and revoke once every SVID it signed is replaced", id)
	}
	return id, nil
}

func authority(a *localauthorityv1.AuthorityState) *Authority {
	if a == nil || a.GetAuthorityId() == "" {
		return nil
	}
	out := &Authority{ID: a.GetAuthorityId(), UpstreamSubjectKeyID: a.GetUpstreamAuthoritySubjectKeyId()}
	if a.GetExpiresAt() != 0 {
		out.ExpiresAt = time.Unix(a.GetExpiresAt(), 0).UTC()
	}
	return out
}

func bundleAuthorities(certs []*types.X509Certificate) ([]BundleAuthority, error) {
	out := make([]BundleAuthority, 0, len(certs))
	for _, c := range certs {
		cert, err := x509.ParseCertificate(c.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("spireadmin: bundle holds an unparsable X.509 authority: %w", err)
		}
		out = append(out, BundleAuthority{
			ID: AuthorityID(cert), Subject: cert.Subject.String(), NotAfter: cert.NotAfter.UTC(), Tainted: c.GetTainted(), cert: cert,
		})
	}
	return out, nil
}

// AuthorityID is the ID SPIRE gives the authority cert is: its Subject Key
// ID in lowercase hex (SPIRE's x509util.SubjectKeyIDToString).
func AuthorityID(cert *x509.Certificate) string { return keyID(cert.SubjectKeyId) }

// SignedBy is the ID of the authority that signed cert (an X509-SVID): its
// Authority Key ID in the same form.
func SignedBy(cert *x509.Certificate) string { return keyID(cert.AuthorityKeyId) }

func keyID(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return fmt.Sprintf("%x", b)
}

// apiErr keeps SPIRE's message and code and says which call failed.
func apiErr(what string, err error) error {
	if st, ok := status.FromError(err); ok {
		if st.Code() == codes.Unavailable {
			return fmt.Errorf("%s: cannot reach the SPIRE server: %s", what, st.Message())
		}
		return fmt.Errorf("%s: SPIRE server refused (%s): %s", what, st.Code(), st.Message())
	}
	return fmt.Errorf("%s: %w", what, err)
}
