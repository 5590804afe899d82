// Package claims holds the rules for caller claims: the CI context a build
// step records as its own claim in an attestation
// (docs/buildtypes/step-v2.md, externalParameters.caller_claims). It has
// no dependencies beyond the standard library, so that the light step
// client (cmd/hallmark-attest) checks claims the way the agent does
// without linking the rest of package attest.
package claims

import (
	"fmt"
	"unicode/utf8"
)

// Limits on what a caller may claim.
const (
	MaxClaims     = 32
	MaxClaimBytes = 1024
)

// Check bounds what a caller may have recorded as its claim.
func Check(claims map[string]string) error {
	if len(claims) > MaxClaims {
		return fmt.Errorf("attest: %d caller claims, at most %d", len(claims), MaxClaims)
	}
	// The error names the first bad claim in key order, the same every
	// time; finding it allocates nothing (statementJSON calls this on
	// every signature and every statement verification re-encodes).
	bad, found := "", false
	for k, v := range claims {
		if (!ValidKey(k) || len(v) > MaxClaimBytes || !utf8.ValidString(v)) && (!found || k < bad) {
			bad, found = k, true
		}
	}
	switch {
	case !found:
	case !ValidKey(bad):
		return fmt.Errorf("attest: caller claim key %.64q: use 1-64 of a-z, 0-9 and _, starting with a letter", bad)
	default:
		return fmt.Errorf("attest: caller claim %s: value longer than %d bytes or not UTF-8", bad, MaxClaimBytes)
	}
	return nil
}

// ValidKey reports whether k may name a caller claim: 1-64 of a-z, 0-9 and
// _, starting with a letter.
func ValidKey(k string) bool {
	if len(k) == 0 || len(k) > 64 || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}
