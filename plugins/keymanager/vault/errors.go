package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"
)

// The four faults a Vault answer can mean; every error from the key
// manager about a Vault request wraps exactly one of them (as *Error).
var (
	// ErrSealed: Vault answered 503 saying it is sealed.
	ErrSealed = errors.New("vault is sealed")
	// ErrUnreachable: no answer (connection refused, TLS, timeout) or
	// 502, 503, 504 or 429: Vault or a proxy before it is down or busy.
	ErrUnreachable = errors.New("vault is unreachable")
	// ErrRefusedByPolicy: 403 again after one fresh login, so the token's
	// policies do not grant the path (with dev_token: at once).
	ErrRefusedByPolicy = errors.New("vault refused by policy")
	// ErrMisconfigured: any other 4xx or 5xx, or an answer the key manager
	// cannot use; Vault's own message says what is wrong.
	ErrMisconfigured = errors.New("vault is misconfigured")
)

// Error is a Vault request that failed: what was asked, what Vault
// answered, and which fault that means.
type Error struct {
	// Op names the request: "write pki/sign/hallmark-agent", "cert login".
	Op string
	// Address is Vault's address.
	Address string
	// Status is the HTTP status; 0 when Vault did not answer.
	Status int
	// Message is Vault's own message (its "errors", joined), or what was
	// wrong with its answer.
	Message string
	// Fault is ErrSealed, ErrUnreachable, ErrRefusedByPolicy or
	// ErrMisconfigured.
	Fault error
	// Err is the transport error when Vault did not answer.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vault: %s: ", e.Op)
	switch {
	case e.Status != 0:
		fmt.Fprintf(&b, "HTTP %d: %s: ", e.Status, e.Message)
	case e.Err != nil:
		fmt.Fprintf(&b, "%s: %v: ", e.Address, e.Err)
	case e.Message != "":
		fmt.Fprintf(&b, "%s: ", e.Message)
	}
	b.WriteString(e.Fault.Error())
	return b.String()
}

func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Fault, e.Err}
	}
	return []error{e.Fault}
}

// FaultName is the fault in a few words: "sealed", "unreachable",
// "refused by policy", "misconfigured".
func (e *Error) FaultName() string {
	switch e.Fault {
	case ErrSealed:
		return "sealed"
	case ErrUnreachable:
		return "unreachable"
	case ErrRefusedByPolicy:
		return "refused by policy"
	default:
		return "misconfigured"
	}
}

// Transient reports whether the fault may end by itself (sealed,
// unreachable), as opposed to needing an operator (refused by policy,
// misconfigured).
func (e *Error) Transient() bool {
	return e.Fault == ErrSealed || e.Fault == ErrUnreachable
}

// knownMisconfigurations map a piece of Vault's message to its fix.
var knownMisconfigurations = []struct{ says, fix string }{
	{"missing name in alias", "cert auth names the login after the certificate's CN and the server's X509-SVID has none: register hallmark-server in SPIRE with a DNS name (`spire-server entry create ... -dns hallmark-server`), or use jwt auth"},
	{"role requires keys of type", "agents send EC P-256 keys: set the PKI role's key_type=ec (setup.sh does)"},
	{"not valid for this role", "the PKI role's allowed_uri_sans must cover the agents' SPIFFE IDs (spiffe://TRUST_DOMAIN/AGENT_PATH_PREFIX/*)"},
	{"not allowed by this role", "the PKI role's allowed_uri_sans must cover the agents' SPIFFE IDs (spiffe://TRUST_DOMAIN/AGENT_PATH_PREFIX/*)"},
	{"unknown role", "the key manager's role must name an existing PKI role on pki_mount"},
	{"no handler for route", "pki_mount or the auth mount does not exist in Vault: check the key manager's pki_mount and auth mount against `vault secrets list` and `vault auth list`"},
	{"crl-signing", "the PKI mount's default issuer is revoked and cannot sign: activate a valid issuer (`hallmark admin rotate signing activate ID`, or `vault write PKI_MOUNT/config/issuers default=ID`)"},
	{"invalid certificate or no client certificate", "cert auth does not trust the server's X509-SVID: the cert role's certificate must be SPIRE's current bundle (`spire-server bundle show -format pem`), and the auth role name must exist"},
	{"no chain matching all constraints", "the cert role's allowed_uri_sans must be the server's SPIFFE ID"},
	{"error validating token", "jwt auth refuses the server's JWT-SVID: jwt_validation_pubkeys must be SPIRE's current JWT authorities, and the role's bound_subject and bound_audiences the server's SPIFFE ID and the key manager's audience"},
	{"role \"", "the jwt auth role named in the key manager's auth block must exist"},
}

// Fix says what the operator should do about the fault.
func (e *Error) Fix() string {
	switch e.Fault {
	case ErrSealed:
		return "unseal Vault (`vault operator unseal`, or let its auto-unseal finish); the server retries by itself and agents keep signing with their current certificates meanwhile"
	case ErrUnreachable:
		return fmt.Sprintf("start Vault or fix the way to it: the key manager's address (%s) and ca_cert_file must reach and verify it; the server retries by itself", e.Address)
	case ErrRefusedByPolicy:
		if e.Op == opTokenLookup {
			return "the static token (VAULT_TOKEN, dev_token auth) is not a valid token: give a valid one, or log in with cert or jwt auth"
		}
		return "the server's Vault token lacks a grant for " + e.path() + ": write the policy that plugins/keymanager/vault/setup.sh writes (and its -rotation policy where the server rotates the signing CA) and attach it to the server's auth role"
	}
	for _, k := range knownMisconfigurations {
		if strings.Contains(e.Message, k.says) {
			return k.fix
		}
	}
	return "fix the Vault setup that Vault's message names; plugins/keymanager/vault/setup.sh is the setup the key manager is tested with"
}

// path is the Vault path in Op ("write pki/sign/r" -> "pki/sign/r").
func (e *Error) path() string {
	if _, p, ok := strings.Cut(e.Op, " "); ok && strings.Contains(p, "/") {
		return p
	}
	return e.Op
}

// isTimeout reports whether err is a network timeout (net.Error).
func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// classify turns a Vault client error into an *Error naming its fault. A
// 403 is ErrRefusedByPolicy: call has by then logged in afresh (or cannot,
// with dev_token).
func (k *KeyManager) classify(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		// The caller gave up: not Vault's fault.
		return fmt.Errorf("vault: %s: %w", op, err)
	}
	e := &Error{Op: op, Address: k.cfg.Address}
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		// Vault took all of requestTimeout: it hangs, or the way to it
		// does.
		e.Fault, e.Err = ErrUnreachable, fmt.Errorf("no answer within %s: %w", k.cfg.requestTimeoutOr(), err)
		return e
	}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		e.Fault, e.Err = ErrUnreachable, err
		return e
	}
	e.Status = re.StatusCode
	e.Message = vaultMessage(re.Errors)
	if e.Message == "" {
		e.Message = http.StatusText(re.StatusCode)
	}
	switch {
	case re.StatusCode == http.StatusServiceUnavailable && strings.Contains(strings.ToLower(e.Message), "sealed"):
		e.Fault = ErrSealed
	case re.StatusCode == http.StatusBadGateway, re.StatusCode == http.StatusServiceUnavailable,
		re.StatusCode == http.StatusGatewayTimeout, re.StatusCode == http.StatusTooManyRequests:
		e.Fault = ErrUnreachable
	case re.StatusCode == http.StatusForbidden:
		e.Fault = ErrRefusedByPolicy
	default:
		e.Fault = ErrMisconfigured
	}
	return e
}

// vaultMessage joins Vault's "errors", unwrapping the ones it sends as a
// multierror text ("1 error occurred:\n\t* permission denied\n\n").
func vaultMessage(errs []string) string {
	var out []string
	for _, e := range errs {
		lines := strings.Split(strings.TrimSpace(e), "\n")
		if len(lines) > 1 && strings.HasSuffix(lines[0], "occurred:") {
			for _, l := range lines[1:] {
				if l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "* ")); l != "" {
					out = append(out, l)
				}
			}
			continue
		}
		out = append(out, strings.TrimSpace(e))
	}
	return strings.Join(out, "; ")
}

// misconfigured is an answer the key manager cannot use.
func (k *KeyManager) misconfigured(op, format string, args ...any) error {
	return &Error{Op: op, Address: k.cfg.Address, Message: fmt.Sprintf(format, args...), Fault: ErrMisconfigured}
}

// faultLog logs a fault of a request when it starts or changes, and the
// recovery when that request succeeds again, instead of one line per
// failed request. Requests are told apart by op, since a policy may refuse
// one path and grant another.
type faultLog struct {
	mu   sync.Mutex
	last map[string]string // op -> FaultName of the fault in progress
}

func (f *faultLog) note(log *zap.Logger, op string, err error) {
	var e *Error
	if err != nil && !errors.As(err, &e) {
		return // not a Vault answer (the caller gave up, no SVID yet, ...)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		f.last = map[string]string{}
	}
	if e == nil {
		if was, ok := f.last[op]; ok {
			log.Info("Vault answers again", zap.String(logOp, op), zap.String(logFault, was))
			delete(f.last, op)
		}
		return
	}
	if name := e.FaultName(); name != f.last[op] {
		f.last[op] = name
		fields := []zap.Field{zap.String(logOp, op), zap.String(logFault, name), zap.Error(e), zap.String(logFix, e.Fix())}
		if e.Transient() {
			log.Warn("Vault fault: "+name, fields...) // the server retries; agents keep signing meanwhile
		} else {
			log.Error("Vault fault: "+name, fields...) // needs an operator
		}
	}
}

// opTokenLookup is the Op of the dev_token's lookup.
const opTokenLookup = "token lookup"

// Log field names.
const (
	logOp    = "vault_op"
	logFault = "vault_fault"
	logFix   = "fix"
)
