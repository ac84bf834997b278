package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

const sqliteSuppCols = `subaccount, recipient, type, source, description, created_at, updated_at`

func scanSQLiteSupp(sc scanner) (Suppression, error) {
	var (
		e                Suppression
		created, updated int64
	)
	err := sc.Scan(&e.Subaccount, &e.Recipient, &e.Type, &e.Source, &e.Description, &created, &updated)
	e.CreatedAt, e.UpdatedAt = fromUS(created), fromUS(updated)
	return e, err
}

// UpsertSuppressions implements Store.
func (s *sqliteStore) UpsertSuppressions(ctx context.Context, entries []Suppression) error {
	if len(entries) == 0 {
		return nil
	}
	now := utc(time.Now())
	return s.inTx(ctx, "upsert suppressions", func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `INSERT INTO suppressions (`+sqliteSuppCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (recipient, subaccount, type) DO UPDATE SET source = excluded.source,
				description = excluded.description, updated_at = excluded.updated_at`)
		if err != nil {
			return err
		}
		defer st.Close()
		for i := range entries {
			e := &entries[i]
			e.Recipient = strings.ToLower(e.Recipient)
			e.UpdatedAt = now
			if e.CreatedAt.IsZero() {
				e.CreatedAt = now
			}
			if _, err := st.ExecContext(ctx, e.Subaccount, e.Recipient, e.Type, e.Source, e.Description,
				us(e.CreatedAt), us(now)); err != nil {
				return err
			}
		}
		return nil
	})
}

// suppWhere builds the WHERE clause of f for SQLite (without After).
func sqliteSuppWhere(f SuppressionFilter) ([]string, []any) {
	var (
		where []string
		args  []any
	)
	if f.Subaccount != nil {
		where = append(where, `subaccount = ?`)
		args = append(args, *f.Subaccount)
	}
	if f.Recipient != "" {
		where = append(where, `recipient = ?`)
		args = append(args, strings.ToLower(f.Recipient))
	}
	if len(f.Types) > 0 {
		where = append(where, `type IN (`+placeholders(len(f.Types))+`)`)
		for _, t := range f.Types {
			args = append(args, t)
		}
	}
	if len(f.Sources) > 0 {
		where = append(where, `source IN (`+placeholders(len(f.Sources))+`)`)
		for _, t := range f.Sources {
			args = append(args, t)
		}
	}
	if f.Domain != "" {
		where = append(where, `recipient LIKE ? ESCAPE '\'`)
		args = append(args, "%@"+likeEscape(strings.ToLower(f.Domain)))
	}
	if f.Description != "" {
		where = append(where, `instr(lower(description), ?) > 0`)
		args = append(args, strings.ToLower(f.Description))
	}
	if !f.From.IsZero() {
		where = append(where, `updated_at >= ?`)
		args = append(args, us(f.From))
	}
	if !f.To.IsZero() {
		where = append(where, `updated_at <= ?`)
		args = append(args, us(f.To))
	}
	return where, args
}

// likeEscape escapes LIKE wildcards with backslashes.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// ListSuppressions implements Store.
func (s *sqliteStore) ListSuppressions(ctx context.Context, f SuppressionFilter) ([]Suppression, int64, error) {
	where, args := sqliteSuppWhere(f)
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, 0, sqliteErr("list suppressions", err)
	}
	defer func() { _ = tx.Rollback() }() // read-only
	cq := `SELECT count(*) FROM suppressions`
	if len(where) > 0 {
		cq += ` WHERE ` + strings.Join(where, " AND ")
	}
	var total int64
	if err := tx.QueryRowContext(ctx, cq, args...).Scan(&total); err != nil {
		return nil, 0, sqliteErr("list suppressions", err)
	}
	if a := f.After; a != nil {
		where = append(where, `(recipient, subaccount, type) > (?, ?, ?)`)
		args = append(args, a.Recipient, a.Subaccount, a.Type)
	}
	q := `SELECT ` + sqliteSuppCols + ` FROM suppressions`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY recipient, subaccount, type LIMIT ?`
	args = append(args, limitOr(f.Limit, 1000))
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, 0, sqliteErr("list suppressions", err)
	}
	out, err := collectSQLiteSupp(rows)
	return out, total, sqliteErr("list suppressions", err)
}

func collectSQLiteSupp(rows *sql.Rows) ([]Suppression, error) {
	defer rows.Close()
	var out []Suppression
	for rows.Next() {
		e, err := scanSQLiteSupp(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// SuppressionsFor implements Store.
func (s *sqliteStore) SuppressionsFor(ctx context.Context, subaccounts []int64, recipients []string) ([]Suppression, error) {
	if len(subaccounts) == 0 || len(recipients) == 0 {
		return nil, nil
	}
	lower := make([]string, len(recipients))
	for i, r := range recipients {
		lower[i] = strings.ToLower(r)
	}
	rcpts, err := json.Marshal(lower)
	if err != nil {
		return nil, fmt.Errorf("suppressions for: %w", err)
	}
	st, err := s.readStmt(ctx, sqliteSuppressionsFor)
	if err != nil {
		return nil, sqliteErr("suppressions for", err)
	}
	// A point lookup per RCPT: without ctx's cancellation, the driver
	// starts no goroutine to watch it (see writeBatch).
	rows, err := st.QueryContext(context.WithoutCancel(ctx), string(rcpts), jsonInts(subaccounts))
	if err != nil {
		return nil, sqliteErr("suppressions for", err)
	}
	out, err := collectSQLiteSupp(rows)
	return out, sqliteErr("suppressions for", err)
}

// sqliteSuppressionsFor is SuppressionsFor's query: the recipients (?1) and
// the accounts (?2) are JSON arrays, so that its text is fixed and it is
// prepared once (an index search per recipient and account).
const sqliteSuppressionsFor = `SELECT ` + sqliteSuppCols + ` FROM suppressions
	WHERE recipient IN (SELECT value FROM json_each(?1)) AND subaccount IN (SELECT value FROM json_each(?2))`

// sqliteSuppDigest is SuppressionsDigest's query (see SuppressionDigest).
const sqliteSuppDigest = `SELECT count(*), coalesce(max(updated_at), 0), coalesce(sum(updated_at % 1000003), 0)
	FROM suppressions`

// SuppressionsDigest implements Store.
func (s *sqliteStore) SuppressionsDigest(ctx context.Context) (SuppressionDigest, error) {
	var d SuppressionDigest
	err := s.r.QueryRowContext(ctx, sqliteSuppDigest).Scan(&d.Count, &d.Latest, &d.Sum)
	return d, sqliteErr("suppressions digest", err)
}

// AllSuppressions implements Store: one read transaction, so the entries
// are those the digest describes.
func (s *sqliteStore) AllSuppressions(ctx context.Context, max int) ([]Suppression, SuppressionDigest, error) {
	var d SuppressionDigest
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, d, sqliteErr("all suppressions", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := tx.QueryRowContext(ctx, sqliteSuppDigest).Scan(&d.Count, &d.Latest, &d.Sum); err != nil {
		return nil, d, sqliteErr("all suppressions", err)
	}
	if d.Count > int64(max) {
		return nil, d, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT subaccount, recipient, type FROM suppressions`)
	if err != nil {
		return nil, d, sqliteErr("all suppressions", err)
	}
	out := make([]Suppression, 0, d.Count)
	for rows.Next() {
		var e Suppression
		if err := rows.Scan(&e.Subaccount, &e.Recipient, &e.Type); err != nil {
			return nil, d, sqliteErr("all suppressions", errors.Join(err, rows.Close()))
		}
		out = append(out, e)
	}
	return out, d, sqliteErr("all suppressions", errors.Join(rows.Err(), rows.Close()))
}

// DeleteSuppressions implements Store.
func (s *sqliteStore) DeleteSuppressions(ctx context.Context, subaccount int64, recipient, typ string) (int64, error) {
	var n int64
	err := s.inTx(ctx, "delete suppressions", func(tx *sql.Tx) error {
		q := `DELETE FROM suppressions WHERE recipient = ? AND subaccount = ?`
		args := []any{strings.ToLower(recipient), subaccount}
		if typ != "" {
			q += ` AND type = ?`
			args = append(args, typ)
		}
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// Sending domain updates and verification status.

// UpdateDomain implements Store.
func (s *sqliteStore) UpdateDomain(ctx context.Context, d *Domain) error {
	return s.inTx(ctx, "update domain", func(tx *sql.Tx) error {
		var sel string
		err := tx.QueryRowContext(ctx, `SELECT selector FROM domains WHERE name = ?`, normDomain(d.Name)).Scan(&sel)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE domains SET shared = ?, selector = ? WHERE name = ?`,
			d.Shared, d.Selector, normDomain(d.Name)); err != nil {
			return err
		}
		if sel != d.Selector {
			_, err = tx.ExecContext(ctx, `DELETE FROM domain_status WHERE name = ?`, normDomain(d.Name))
		}
		return err
	})
}

const sqliteStatusCols = `ownership_verified, dkim_status, spf_status, dkim_error, spf_error, verified_at`

func scanSQLiteStatus(sc scanner, name *string) (DomainStatus, error) {
	var (
		st DomainStatus
		at int64
	)
	dest := []any{&st.OwnershipVerified, &st.DKIMStatus, &st.SPFStatus, &st.DKIMError, &st.SPFError, &at}
	if name != nil {
		dest = append([]any{name}, dest...)
	}
	err := sc.Scan(dest...)
	st.VerifiedAt = fromUS(at)
	return st, err
}

// DomainStatus implements Store.
func (s *sqliteStore) DomainStatus(ctx context.Context, name string) (DomainStatus, error) {
	var exists int
	name = normDomain(name)
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM domains WHERE name = ?`, name).Scan(&exists); err != nil {
		return DomainStatus{}, sqliteErr("domain status", err)
	}
	if exists == 0 {
		return DomainStatus{}, sqliteErr("domain status "+name, ErrNotFound)
	}
	st, err := scanSQLiteStatus(s.r.QueryRowContext(ctx, `SELECT `+sqliteStatusCols+` FROM domain_status WHERE name = ?`, name), nil)
	if errors.Is(err, sql.ErrNoRows) {
		return DomainStatusDefaults(), nil
	}
	return st, sqliteErr("domain status", err)
}

// DomainStatuses implements Store.
func (s *sqliteStore) DomainStatuses(ctx context.Context) (map[string]DomainStatus, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, `+sqliteStatusCols+` FROM domain_status`)
	if err != nil {
		return nil, sqliteErr("domain statuses", err)
	}
	defer rows.Close()
	out := map[string]DomainStatus{}
	for rows.Next() {
		var name string
		st, err := scanSQLiteStatus(rows, &name)
		if err != nil {
			return nil, sqliteErr("domain statuses", err)
		}
		out[name] = st
	}
	return out, sqliteErr("domain statuses", rows.Err())
}

// SetDomainStatus implements Store.
func (s *sqliteStore) SetDomainStatus(ctx context.Context, name string, st DomainStatus) error {
	if st.VerifiedAt.IsZero() {
		st.VerifiedAt = time.Now()
	}
	return s.inTx(ctx, "set domain status", func(tx *sql.Tx) error {
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM domains WHERE name = ?`, normDomain(name)).Scan(&exists); err != nil {
			return err
		}
		if exists == 0 {
			return ErrNotFound
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO domain_status (name, `+sqliteStatusCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET ownership_verified = excluded.ownership_verified,
				dkim_status = excluded.dkim_status, spf_status = excluded.spf_status, dkim_error = excluded.dkim_error,
				spf_error = excluded.spf_error, verified_at = excluded.verified_at`,
			normDomain(name), st.OwnershipVerified, st.DKIMStatus, st.SPFStatus, st.DKIMError, st.SPFError, us(st.VerifiedAt))
		return err
	})
}
