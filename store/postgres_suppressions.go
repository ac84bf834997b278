package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const pgSuppCols = `subaccount, recipient, type, source, description, created_at, updated_at`

func scanPGSupp(row pgx.CollectableRow) (Suppression, error) {
	var e Suppression
	err := row.Scan(&e.Subaccount, &e.Recipient, &e.Type, &e.Source, &e.Description, &e.CreatedAt, &e.UpdatedAt)
	e.CreatedAt, e.UpdatedAt = e.CreatedAt.UTC(), e.UpdatedAt.UTC()
	return e, err
}

// UpsertSuppressions implements Store.
func (s *pgStore) UpsertSuppressions(ctx context.Context, entries []Suppression) error {
	if len(entries) == 0 {
		return nil
	}
	now := utc(time.Now())
	b := &pgx.Batch{}
	for i := range entries {
		e := &entries[i]
		e.Recipient = strings.ToLower(e.Recipient)
		e.UpdatedAt = now
		if e.CreatedAt.IsZero() {
			e.CreatedAt = now
		}
		b.Queue(`INSERT INTO suppressions (`+pgSuppCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (recipient, subaccount, type) DO UPDATE SET source = excluded.source,
				description = excluded.description, updated_at = excluded.updated_at`,
			e.Subaccount, e.Recipient, e.Type, e.Source, e.Description, utc(e.CreatedAt), now)
	}
	return s.inTx(ctx, "upsert suppressions", func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, b).Close()
	})
}

// pgSuppWhere builds the WHERE conditions of f (without After).
func pgSuppWhere(f SuppressionFilter, args *pgArgs) []string {
	var where []string
	if f.Subaccount != nil {
		where = append(where, `subaccount = `+args.add(*f.Subaccount))
	}
	if f.Recipient != "" {
		where = append(where, `recipient = `+args.add(strings.ToLower(f.Recipient)))
	}
	if len(f.Types) > 0 {
		where = append(where, `type = ANY(`+args.add(f.Types)+`::text[])`)
	}
	if len(f.Sources) > 0 {
		where = append(where, `source = ANY(`+args.add(f.Sources)+`::text[])`)
	}
	if f.Domain != "" {
		where = append(where, `recipient LIKE `+args.add("%@"+likeEscape(strings.ToLower(f.Domain)))+` ESCAPE '\'`)
	}
	if f.Description != "" {
		where = append(where, `strpos(lower(description), `+args.add(strings.ToLower(f.Description))+`) > 0`)
	}
	if !f.From.IsZero() {
		where = append(where, `updated_at >= `+args.add(utc(f.From)))
	}
	if !f.To.IsZero() {
		where = append(where, `updated_at <= `+args.add(utc(f.To)))
	}
	return where
}

// ListSuppressions implements Store.
func (s *pgStore) ListSuppressions(ctx context.Context, f SuppressionFilter) ([]Suppression, int64, error) {
	var (
		out   []Suppression
		total int64
	)
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		var args pgArgs
		where := pgSuppWhere(f, &args)
		cq := `SELECT count(*) FROM suppressions`
		if len(where) > 0 {
			cq += ` WHERE ` + strings.Join(where, " AND ")
		}
		if err := tx.QueryRow(ctx, cq, args...).Scan(&total); err != nil {
			return err
		}
		if a := f.After; a != nil {
			where = append(where, `(recipient, subaccount, type) > (`+args.add(a.Recipient)+`, `+
				args.add(a.Subaccount)+`::bigint, `+args.add(a.Type)+`)`)
		}
		q := `SELECT ` + pgSuppCols + ` FROM suppressions`
		if len(where) > 0 {
			q += ` WHERE ` + strings.Join(where, " AND ")
		}
		q += ` ORDER BY recipient, subaccount, type LIMIT ` + args.add(limitOr(f.Limit, 1000))
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanPGSupp)
		return err
	})
	return out, total, pgErr("list suppressions", err)
}

// SuppressionsFor implements Store.
func (s *pgStore) SuppressionsFor(ctx context.Context, subaccounts []int64, recipients []string) ([]Suppression, error) {
	if len(subaccounts) == 0 || len(recipients) == 0 {
		return nil, nil
	}
	lower := make([]string, len(recipients))
	for i, r := range recipients {
		lower[i] = strings.ToLower(r)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+pgSuppCols+` FROM suppressions
		WHERE recipient = ANY($1::text[]) AND subaccount = ANY($2::bigint[])`, lower, subaccounts)
	if err != nil {
		return nil, pgErr("suppressions for", err)
	}
	out, err := pgx.CollectRows(rows, scanPGSupp)
	return out, pgErr("suppressions for", err)
}

// pgSuppDigest is SuppressionsDigest's query (see SuppressionDigest), in
// Unix microseconds as on SQLite.
const pgSuppDigest = `SELECT count(*),
		coalesce((extract(epoch FROM max(updated_at)) * 1000000)::bigint, 0),
		coalesce(sum((extract(epoch FROM updated_at) * 1000000)::bigint % 1000003), 0)::bigint
	FROM suppressions`

// SuppressionsDigest implements Store.
func (s *pgStore) SuppressionsDigest(ctx context.Context) (SuppressionDigest, error) {
	var d SuppressionDigest
	err := s.pool.QueryRow(ctx, pgSuppDigest).Scan(&d.Count, &d.Latest, &d.Sum)
	return d, pgErr("suppressions digest", err)
}

// AllSuppressions implements Store: one repeatable-read transaction, so
// the entries are those the digest describes.
func (s *pgStore) AllSuppressions(ctx context.Context, max int) ([]Suppression, SuppressionDigest, error) {
	var d SuppressionDigest
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, d, pgErr("all suppressions", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := tx.QueryRow(ctx, pgSuppDigest).Scan(&d.Count, &d.Latest, &d.Sum); err != nil {
		return nil, d, pgErr("all suppressions", err)
	}
	if d.Count > int64(max) {
		return nil, d, nil
	}
	rows, err := tx.Query(ctx, `SELECT subaccount, recipient, type FROM suppressions`)
	if err != nil {
		return nil, d, pgErr("all suppressions", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Suppression, error) {
		var e Suppression
		err := r.Scan(&e.Subaccount, &e.Recipient, &e.Type)
		return e, err
	})
	return out, d, pgErr("all suppressions", err)
}

// DeleteSuppressions implements Store.
func (s *pgStore) DeleteSuppressions(ctx context.Context, subaccount int64, recipient, typ string) (int64, error) {
	q := `DELETE FROM suppressions WHERE recipient = $1 AND subaccount = $2`
	args := []any{strings.ToLower(recipient), subaccount}
	if typ != "" {
		q += ` AND type = $3`
		args = append(args, typ)
	}
	tag, err := s.pool.Exec(ctx, q, args...)
	if err != nil {
		return 0, pgErr("delete suppressions", err)
	}
	return tag.RowsAffected(), nil
}

// Sending domain updates and verification status.

// UpdateDomain implements Store.
func (s *pgStore) UpdateDomain(ctx context.Context, d *Domain) error {
	return s.inTx(ctx, "update domain", func(tx pgx.Tx) error {
		var sel string
		err := tx.QueryRow(ctx, `SELECT selector FROM domains WHERE name = $1 FOR UPDATE`, normDomain(d.Name)).Scan(&sel)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE domains SET shared = $1, selector = $2 WHERE name = $3`,
			d.Shared, d.Selector, normDomain(d.Name)); err != nil {
			return err
		}
		if sel != d.Selector {
			_, err = tx.Exec(ctx, `DELETE FROM domain_status WHERE name = $1`, normDomain(d.Name))
		}
		return err
	})
}

const pgStatusCols = `ownership_verified, dkim_status, spf_status, dkim_error, spf_error, verified_at`

// DomainStatus implements Store.
func (s *pgStore) DomainStatus(ctx context.Context, name string) (DomainStatus, error) {
	name = normDomain(name)
	var (
		st    DomainStatus
		found *bool
		at    *time.Time
		ov    *bool
		dk    *string
		sp    *string
		de    *string
		se    *string
	)
	err := s.pool.QueryRow(ctx, `SELECT true, s.ownership_verified, s.dkim_status, s.spf_status, s.dkim_error,
			s.spf_error, s.verified_at
		FROM domains d LEFT JOIN domain_status s ON s.name = d.name WHERE d.name = $1`, name).
		Scan(&found, &ov, &dk, &sp, &de, &se, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, pgErr("domain status "+name, ErrNotFound)
	}
	if err != nil {
		return st, pgErr("domain status", err)
	}
	if at == nil {
		return DomainStatusDefaults(), nil
	}
	return DomainStatus{OwnershipVerified: *ov, DKIMStatus: *dk, SPFStatus: *sp, DKIMError: *de, SPFError: *se,
		VerifiedAt: at.UTC()}, nil
}

// DomainStatuses implements Store.
func (s *pgStore) DomainStatuses(ctx context.Context) (map[string]DomainStatus, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, `+pgStatusCols+` FROM domain_status`)
	if err != nil {
		return nil, pgErr("domain statuses", err)
	}
	out := map[string]DomainStatus{}
	_, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (struct{}, error) {
		var (
			name string
			st   DomainStatus
		)
		err := row.Scan(&name, &st.OwnershipVerified, &st.DKIMStatus, &st.SPFStatus, &st.DKIMError, &st.SPFError, &st.VerifiedAt)
		st.VerifiedAt = st.VerifiedAt.UTC()
		out[name] = st
		return struct{}{}, err
	})
	return out, pgErr("domain statuses", err)
}

// SetDomainStatus implements Store.
func (s *pgStore) SetDomainStatus(ctx context.Context, name string, st DomainStatus) error {
	if st.VerifiedAt.IsZero() {
		st.VerifiedAt = time.Now()
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO domain_status (name, `+pgStatusCols+`)
		SELECT name, $2, $3, $4, $5, $6, $7 FROM domains WHERE name = $1
		ON CONFLICT (name) DO UPDATE SET ownership_verified = excluded.ownership_verified,
			dkim_status = excluded.dkim_status, spf_status = excluded.spf_status, dkim_error = excluded.dkim_error,
			spf_error = excluded.spf_error, verified_at = excluded.verified_at`,
		normDomain(name), st.OwnershipVerified, st.DKIMStatus, st.SPFStatus, st.DKIMError, st.SPFError, utc(st.VerifiedAt))
	return pgOneRow("set domain status", name, tag, err)
}
