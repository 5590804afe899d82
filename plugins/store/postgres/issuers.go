package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/hallmark-dev/hallmark/plugins/store"
)

// SetIssuerState records st, replacing any earlier record for the same
// fingerprint.
func (s *Store) SetIssuerState(ctx context.Context, st store.IssuerState) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO issuer_states (fingerprint, tainted_at, revoked_at) VALUES ($1, $2, $3)
ON CONFLICT (fingerprint) DO UPDATE SET tainted_at = excluded.tainted_at, revoked_at = excluded.revoked_at`,
		st.Fingerprint, store.UnixOrZero(st.TaintedAt), store.UnixOrZero(st.RevokedAt))
	if err != nil {
		return fmt.Errorf("postgres: record issuer state: %w", err)
	}
	return nil
}

// IssuerStates returns every recorded issuer state.
func (s *Store) IssuerStates(ctx context.Context) ([]store.IssuerState, error) {
	rows, err := s.pool.Query(ctx, `SELECT fingerprint, tainted_at, revoked_at FROM issuer_states ORDER BY fingerprint`)
	if err != nil {
		return nil, fmt.Errorf("postgres: issuer states: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.IssuerState, error) {
		var st store.IssuerState
		var tainted, revoked int64
		err := r.Scan(&st.Fingerprint, &tainted, &revoked)
		st.TaintedAt, st.RevokedAt = store.TimeOrZero(tainted), store.TimeOrZero(revoked)
		return st, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: read issuer states: %w", err)
	}
	return out, nil
}

// Ping reports whether the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.pool.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}
