package store

import (
	"context"
	"database/sql"
	"time"
)

// AddAudit implements AuditStore.
func (s *sqliteStore) AddAudit(ctx context.Context, e *AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = utc(e.Time)
	return s.inTx(ctx, "add audit entry", func(tx *sql.Tx) error {
		a := e.Actor
		return tx.QueryRowContext(ctx, `INSERT INTO audit (time, action, object_type, object_id, subaccount,
			before_json, after_json, via, actor_key_id, actor_short, actor_user, actor_host, ip)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			us(e.Time), e.Action, e.ObjectType, e.ObjectID, e.Subaccount, nullJSON(e.Before), nullJSON(e.After),
			a.Via, a.KeyID, a.ShortKey, a.User, a.Host, a.IP).Scan(&e.ID)
	})
}

// ListAudit implements AuditStore.
func (s *sqliteStore) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	where, args := auditWhere(f, func(int) string { return "?" }, func(t time.Time) any { return us(t) })
	args = append(args, limitOr(f.Limit, 1000))
	rows, err := s.r.QueryContext(ctx, `SELECT `+auditCols+` FROM audit`+where+` ORDER BY id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, sqliteErr("list audit", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var (
			e             AuditEntry
			t             int64
			before, after sql.NullString
		)
		a := &e.Actor
		if err := rows.Scan(&e.ID, &t, &e.Action, &e.ObjectType, &e.ObjectID, &e.Subaccount, &before, &after,
			&a.Via, &a.KeyID, &a.ShortKey, &a.User, &a.Host, &a.IP); err != nil {
			return nil, sqliteErr("list audit", err)
		}
		e.Time = fromUS(t)
		if before.Valid {
			e.Before = []byte(before.String)
		}
		if after.Valid {
			e.After = []byte(after.String)
		}
		out = append(out, e)
	}
	return out, sqliteErr("list audit", rows.Err())
}

// PruneAudit implements AuditStore.
func (s *sqliteStore) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune audit", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM audit WHERE time < ?`, us(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}
