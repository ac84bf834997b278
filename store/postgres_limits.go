package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// SetLimits implements LimitStore.
func (s *pgStore) SetLimits(ctx context.Context, sc LimitScope, l Limits) error {
	var err error
	if l.IsZero() {
		_, err = s.pool.Exec(ctx, `DELETE FROM sending_limits WHERE kind = $1 AND id = $2`, sc.Kind, sc.ID)
	} else {
		_, err = s.pool.Exec(ctx, `INSERT INTO sending_limits
			(kind, id, per_minute, per_hour, per_day, per_month, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (kind, id) DO UPDATE SET per_minute = excluded.per_minute,
			per_hour = excluded.per_hour, per_day = excluded.per_day, per_month = excluded.per_month,
			updated_at = excluded.updated_at`,
			sc.Kind, sc.ID, l.PerMinute, l.PerHour, l.PerDay, l.PerMonth, utc(time.Now()))
	}
	return pgErr("set limits", err)
}

// GetLimits implements LimitStore.
func (s *pgStore) GetLimits(ctx context.Context, sc LimitScope) (Limits, error) {
	var l Limits
	err := s.pool.QueryRow(ctx, `SELECT per_minute, per_hour, per_day, per_month
		FROM sending_limits WHERE kind = $1 AND id = $2`, sc.Kind, sc.ID).
		Scan(&l.PerMinute, &l.PerHour, &l.PerDay, &l.PerMonth)
	if errors.Is(err, pgx.ErrNoRows) {
		return Limits{}, nil
	}
	return l, pgErr("get limits", err)
}

// LimitsOf implements LimitStore.
func (s *pgStore) LimitsOf(ctx context.Context, scopes []LimitScope) (map[LimitScope]Limits, error) {
	out := make(map[LimitScope]Limits)
	if len(scopes) == 0 {
		return out, nil
	}
	kinds := make([]string, len(scopes))
	ids := make([]string, len(scopes))
	for i, sc := range scopes {
		kinds[i], ids[i] = sc.Kind, sc.ID
	}
	rows, err := s.pool.Query(ctx, `SELECT l.kind, l.id, l.per_minute, l.per_hour, l.per_day, l.per_month
		FROM sending_limits l JOIN unnest($1::text[], $2::text[]) AS q (kind, id)
		ON l.kind = q.kind AND l.id = q.id`, kinds, ids)
	if err != nil {
		return nil, pgErr("limits of", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			sc LimitScope
			l  Limits
		)
		if err := rows.Scan(&sc.Kind, &sc.ID, &l.PerMinute, &l.PerHour, &l.PerDay, &l.PerMonth); err != nil {
			return nil, pgErr("limits of", err)
		}
		out[sc] = l
	}
	return out, pgErr("limits of", rows.Err())
}

// ReserveQuota implements LimitStore: the row is created if missing, then
// locked (FOR UPDATE) while the amount is decided, so concurrent nodes
// reserve one after the other.
func (s *pgStore) ReserveQuota(ctx context.Context, sc LimitScope, w QuotaWindow, want, ceiling int64) (int64, error) {
	var got int64
	err := s.inTx(ctx, "reserve quota", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO sending_counts (kind, id, unit, window_start, window_end, count)
			VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT DO NOTHING`,
			sc.Kind, sc.ID, w.Unit, utc(w.Start), utc(w.End)); err != nil {
			return err
		}
		var count int64
		if err := tx.QueryRow(ctx, `SELECT count FROM sending_counts
			WHERE kind = $1 AND id = $2 AND unit = $3 AND window_start = $4 FOR UPDATE`,
			sc.Kind, sc.ID, w.Unit, utc(w.Start)).Scan(&count); err != nil {
			return err
		}
		got = reserveAmount(count, want, ceiling)
		if got == 0 {
			return nil
		}
		_, err := tx.Exec(ctx, `UPDATE sending_counts SET count = count + $5
			WHERE kind = $1 AND id = $2 AND unit = $3 AND window_start = $4`,
			sc.Kind, sc.ID, w.Unit, utc(w.Start), got)
		return err
	})
	if err != nil {
		return 0, err
	}
	return got, nil
}

// QuotaUsed implements LimitStore.
func (s *pgStore) QuotaUsed(ctx context.Context, sc LimitScope, ws []QuotaWindow) ([]int64, error) {
	out := make([]int64, len(ws))
	for i, w := range ws {
		err := s.pool.QueryRow(ctx, `SELECT count FROM sending_counts
			WHERE kind = $1 AND id = $2 AND unit = $3 AND window_start = $4`,
			sc.Kind, sc.ID, w.Unit, utc(w.Start)).Scan(&out[i])
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, pgErr("quota used", err)
		}
	}
	return out, nil
}

// PruneQuota implements LimitStore.
func (s *pgStore) PruneQuota(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM sending_counts WHERE window_end < $1`, utc(before))
	if err != nil {
		return 0, pgErr("prune quota", err)
	}
	return tag.RowsAffected(), nil
}
