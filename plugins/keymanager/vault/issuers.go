package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"

	"github.com/hallmark-dev/hallmark/plugins/keymanager"
)

// Signing-CA rotation with Vault PKI's issuers: PrepareIssuer generates a
// new root (pki/root/rotate/internal), which Vault does not make the
// default; ActivateIssuer makes it the mount's default issuer
// (pki/config/issuers), which is what the role signs with as long as its
// issuer_ref is "default"; RevokeIssuer revokes an old one
// (pki/issuer/ID/revoke). Issuers are named by Vault's issuer_id.

// issuerNamePrefix starts the names of the issuers PrepareIssuer creates;
// the rest is the creation time, so that names sort as issuers were made.
const issuerNamePrefix = "hallmark-"

// Issuers returns every issuer of the PKI mount, revoked ones included,
// oldest first (by certificate NotBefore).
func (k *KeyManager) Issuers(ctx context.Context) ([]keymanager.Issuer, error) {
	ids, err := k.issuerIDs(ctx)
	if err != nil {
		return nil, err
	}
	def, _, err := k.issuersConfig(ctx)
	if err != nil {
		return nil, err
	}
	type entry struct {
		keymanager.Issuer
		name string
	}
	entries := make([]entry, 0, len(ids))
	for _, id := range ids {
		iss, name, err := k.readIssuer(ctx, id)
		if err != nil {
			return nil, err
		}
		iss.Active = id == def
		entries = append(entries, entry{iss, name})
	}
	// Vault lists issuers in storage order (sorted IDs), not by age, and
	// keeps no creation time: order by NotBefore (whole seconds), then put
	// issuers PrepareIssuer made (named by their creation time) after
	// others, since it rotates away from an existing one.
	slices.SortStableFunc(entries, func(a, b entry) int {
		if c := a.Chain[0].NotBefore.Compare(b.Chain[0].NotBefore); c != 0 {
			return c
		}
		aOurs, bOurs := strings.HasPrefix(a.name, issuerNamePrefix), strings.HasPrefix(b.name, issuerNamePrefix)
		switch {
		case aOurs && !bOurs:
			return 1
		case !aOurs && bOurs:
			return -1
		case aOurs && bOurs:
			if c := strings.Compare(a.name, b.name); c != 0 {
				return c
			}
		}
		return strings.Compare(a.ID, b.ID)
	})
	out := make([]keymanager.Issuer, len(entries))
	for i, e := range entries {
		out[i] = e.Issuer
	}
	return out, nil
}

// PrepareIssuer generates a new root issuer in Vault (EC P-256, with the
// common name and lifetime of the current default issuer) that does not
// sign until ActivateIssuer. It refuses when the mount has
// default_follows_latest_issuer set, since the new issuer would then sign
// at once.
func (k *KeyManager) PrepareIssuer(ctx context.Context) (keymanager.Issuer, error) {
	def, follows, err := k.issuersConfig(ctx)
	if err != nil {
		return keymanager.Issuer{}, err
	}
	if follows {
		return keymanager.Issuer{}, fmt.Errorf("vault: prepare issuer: %s/config/issuers has default_follows_latest_issuer=true, so a new issuer would sign at once: set it to false", k.cfg.PKIMount)
	}
	if def == "" {
		return keymanager.Issuer{}, fmt.Errorf("vault: prepare issuer: %s has no default issuer to rotate from: generate a root first", k.cfg.PKIMount)
	}
	current, _, err := k.readIssuer(ctx, def)
	if err != nil {
		return keymanager.Issuer{}, err
	}
	ca := current.Chain[0]
	ttl := ca.NotAfter.Sub(ca.NotBefore).Truncate(time.Second)
	name, err := newIssuerName(k.deps.Now())
	if err != nil {
		return keymanager.Issuer{}, err
	}
	path := k.cfg.PKIMount + "/root/rotate/internal"
	secret, err := k.write(ctx, path, map[string]any{
		"common_name": ca.Subject.CommonName,
		// The subject's serialNumber, so that two issuers' subjects
		// differ: verifiers print the subject (`hallmark verify`'s
		// issuer line), and an outside review could not tell the old CA
		// from the new by it.
		"serial_number": name,
		"key_type":      "ec",
		"key_bits":      256,
		"ttl":           fmt.Sprintf("%ds", int64(ttl/time.Second)),
		"issuer_name":   name,
	})
	if err != nil {
		return keymanager.Issuer{}, err
	}
	k.logWarnings(path, secret)
	id, _ := secret.Data["issuer_id"].(string)
	if id == "" {
		return keymanager.Issuer{}, k.misconfigured("write "+path, "no issuer_id in the answer")
	}
	iss, _, err := k.readIssuer(ctx, id)
	if err != nil {
		return keymanager.Issuer{}, err
	}
	k.deps.Log.Info("Vault issuer prepared", zap.String("issuer_id", id), zap.String("issuer_name", name))
	return iss, nil
}

// ActivateIssuer makes issuer id the mount's default issuer, so that the
// role signs with it from now on. An id Vault does not list wraps
// keymanager.ErrUnknownIssuer (names and "default" are not IDs); a revoked
// issuer is refused.
func (k *KeyManager) ActivateIssuer(ctx context.Context, id string) error {
	if err := k.knownIssuer(ctx, "activate", id); err != nil {
		return err
	}
	iss, _, err := k.readIssuer(ctx, id)
	if err != nil {
		return err
	}
	if iss.Revoked {
		return fmt.Errorf("vault: activate issuer %s: it is revoked and can never sign again", id)
	}
	path := k.cfg.PKIMount + "/config/issuers"
	secret, err := k.write(ctx, path, map[string]any{"default": id})
	if err != nil {
		return err
	}
	k.logWarnings(path, secret)
	if got, _ := secret.Data["default"].(string); got != id {
		return k.misconfigured("write "+path, "asked to make issuer %s the default, the default is now %q", id, got)
	}
	k.deps.Log.Info("Vault issuer activated", zap.String("issuer_id", id))
	return nil
}

// RevokeIssuer revokes issuer id in Vault: it never signs again. The
// default (active) issuer is refused: activate another first. An id Vault
// does not list wraps keymanager.ErrUnknownIssuer.
func (k *KeyManager) RevokeIssuer(ctx context.Context, id string) error {
	if err := k.knownIssuer(ctx, "revoke", id); err != nil {
		return err
	}
	def, _, err := k.issuersConfig(ctx)
	if err != nil {
		return err
	}
	if def == id {
		return fmt.Errorf("vault: revoke issuer %s: it is the active (default) issuer; activate another one first", id)
	}
	path := k.cfg.PKIMount + "/issuer/" + id + "/revoke"
	secret, err := k.write(ctx, path, nil)
	if err != nil {
		return err
	}
	if revoked, _ := secret.Data["revoked"].(bool); !revoked {
		return k.misconfigured("write "+path, "issuer %s is not reported revoked", id)
	}
	k.logWarnings(path, secret)
	k.deps.Log.Info("Vault issuer revoked", zap.String("issuer_id", id))
	return nil
}

// knownIssuer checks that id is one of the IDs Vault lists.
func (k *KeyManager) knownIssuer(ctx context.Context, op, id string) error {
	ids, err := k.issuerIDs(ctx)
	if err != nil {
		return err
	}
	if id == "" || !slices.Contains(ids, id) {
		return fmt.Errorf("vault: %s issuer %q: %w", op, id, keymanager.ErrUnknownIssuer)
	}
	return nil
}

// issuerIDs lists the mount's issuer IDs (LIST pki/issuers).
func (k *KeyManager) issuerIDs(ctx context.Context) ([]string, error) {
	path := k.cfg.PKIMount + "/issuers"
	secret, err := k.call(ctx, "list "+path, func() (*api.Secret, error) {
		return k.client.Logical().ListWithContext(ctx, path)
	})
	if err != nil {
		return nil, err
	}
	if secret == nil {
		return nil, nil // Vault answers an empty list with 404
	}
	keys, _ := secret.Data["keys"].([]any)
	ids := make([]string, 0, len(keys))
	for _, key := range keys {
		if s, ok := key.(string); ok && s != "" {
			ids = append(ids, s)
		}
	}
	return ids, nil
}

// issuersConfig reads pki/config/issuers: the default issuer's ID and
// default_follows_latest_issuer.
func (k *KeyManager) issuersConfig(ctx context.Context) (string, bool, error) {
	path := k.cfg.PKIMount + "/config/issuers"
	secret, err := k.read(ctx, path)
	if err != nil {
		return "", false, err
	}
	def, _ := secret.Data["default"].(string)
	follows, _ := secret.Data["default_follows_latest_issuer"].(bool)
	return def, follows, nil
}

// readIssuer reads pki/issuer/ID into an Issuer (Active unset) and its name.
func (k *KeyManager) readIssuer(ctx context.Context, id string) (keymanager.Issuer, string, error) {
	path := k.cfg.PKIMount + "/issuer/" + id
	secret, err := k.read(ctx, path)
	if err != nil {
		return keymanager.Issuer{}, "", err
	}
	certPEM, _ := secret.Data["certificate"].(string)
	certs, err := parsePEMCerts(certPEM)
	if err != nil {
		return keymanager.Issuer{}, "", k.misconfigured("read "+path, "certificate: %v", err)
	}
	chain := certs[:1]
	if list, ok := secret.Data["ca_chain"].([]any); ok {
		for _, v := range list {
			s, _ := v.(string)
			more, err := parsePEMCerts(s)
			if err != nil {
				return keymanager.Issuer{}, "", k.misconfigured("read "+path, "ca_chain: %v", err)
			}
			for _, c := range more {
				if !bytes.Equal(c.Raw, chain[0].Raw) {
					chain = append(chain, c)
				}
			}
		}
	}
	gotID, _ := secret.Data["issuer_id"].(string)
	if gotID != id {
		return keymanager.Issuer{}, "", k.misconfigured("read "+path, "answered for issuer %q", gotID)
	}
	revoked, _ := secret.Data["revoked"].(bool)
	name, _ := secret.Data["issuer_name"].(string)
	return keymanager.Issuer{ID: id, Chain: slices.Clip(chain), Revoked: revoked}, name, nil
}

func (k *KeyManager) read(ctx context.Context, path string) (*api.Secret, error) {
	secret, err := k.call(ctx, "read "+path, func() (*api.Secret, error) {
		return k.client.Logical().ReadWithContext(ctx, path)
	})
	if err != nil {
		return nil, err
	}
	if secret == nil {
		return nil, k.misconfigured("read "+path, "not found")
	}
	return secret, nil
}

func (k *KeyManager) logWarnings(path string, secret *api.Secret) {
	if len(secret.Warnings) > 0 {
		k.deps.Log.Warn("Vault answered with warnings", zap.String("path", path), zap.Strings("warnings", secret.Warnings))
	}
}

// newIssuerName is hallmark-YYYYMMDDTHHMMSS.NNNNNNNNNZ-RANDOM: unique, and
// sorting as issuers were made.
func newIssuerName(now time.Time) (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("vault: issuer name: %w", err)
	}
	stamp := strings.ReplaceAll(now.UTC().Format("20060102T150405.000000000Z"), ".", "-")
	return issuerNamePrefix + stamp + "-" + hex.EncodeToString(b), nil
}
