package claims

import (
	"strconv"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	many := map[string]string{}
	for i := range MaxClaims + 1 {
		many["k"+strconv.Itoa(i)] = "v"
	}
	for _, tc := range []struct {
		name    string
		claims  map[string]string
		wantErr string // "" for none
	}{
		{"none", nil, ""},
		{"valid", map[string]string{"run_id": "7", "job": "日本"}, ""},
		{"too many", many, "caller claims, at most"},
		{"upper-case key", map[string]string{"Job": "x"}, `caller claim key "Job"`},
		{"empty key", map[string]string{"": "x"}, `caller claim key ""`},
		{"value too long", map[string]string{"job": strings.Repeat("x", MaxClaimBytes+1)}, "caller claim job: value longer"},
		{"value not UTF-8", map[string]string{"job": "\xff"}, "caller claim job: value longer"},
		// With several bad keys the error names the first in sorted
		// order, whatever the map's iteration order.
		{"several bad keys", map[string]string{"Zed": "x", "Alpha": "x", "Mid": "x", "b_ok": "x"}, `caller claim key "Alpha"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				err := Check(tc.claims)
				switch {
				case tc.wantErr == "" && err != nil:
					t.Fatalf("Check: %v", err)
				case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
					t.Fatalf("Check: %v, want an error containing %q", err, tc.wantErr)
				}
			}
		})
	}
}
