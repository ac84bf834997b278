package store

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// AddAudit implements AuditStore.
func (s *pgStore) AddAudit(ctx context.Context, e *AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = utc(e.Time)
	a := e.Actor
	err := s.pool.QueryRow(ctx, `INSERT INTO audit (time, action, object_type, object_id, subaccount,
		before_json, after_json, via, actor_key_id, actor_short, actor_user, actor_host, ip)
		VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12, $13) RETURNING id`,
		e.Time, e.Action, e.ObjectType, e.ObjectID, e.Subaccount, nullJSON(e.Before), nullJSON(e.After),
		a.Via, a.KeyID, a.ShortKey, a.User, a.Host, a.IP).Scan(&e.ID)
	return pgErr("add audit entry", err)
}

// ListAudit implements AuditStore.
func (s *pgStore) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	where, args := auditWhere(f, func(i int) string { return "$" + strconv.Itoa(i) }, func(t time.Time) any { return utc(t) })
	args = append(args, limitOr(f.Limit, 1000))
	rows, err := s.pool.Query(ctx, `SELECT `+auditCols+` FROM audit`+where+
		` ORDER BY id DESC LIMIT $`+strconv.Itoa(len(args)), args...)
	if err != nil {
		return nil, pgErr("list audit", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (AuditEntry, error) {
		var (
			e             AuditEntry
			before, after *string
		)
		a := &e.Actor
		if err := row.Scan(&e.ID, &e.Time, &e.Action, &e.ObjectType, &e.ObjectID, &e.Subaccount, &before, &after,
			&a.Via, &a.KeyID, &a.ShortKey, &a.User, &a.Host, &a.IP); err != nil {
			return e, err
		}
		e.Time = e.Time.UTC()
		if before != nil {
			e.Before = []byte(*before)
		}
		if after != nil {
			e.After = []byte(*after)
		}
		return e, nil
	})
	return out, pgErr("list audit", err)
}

// PruneAudit implements AuditStore.
func (s *pgStore) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM audit WHERE time < $1`, utc(before))
	if err != nil {
		return 0, pgErr("prune audit", err)
	}
	return tag.RowsAffected(), nil
}
