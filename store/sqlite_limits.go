package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SetLimits implements LimitStore.
func (s *sqliteStore) SetLimits(ctx context.Context, sc LimitScope, l Limits) error {
	return s.inTx(ctx, "set limits", func(tx *sql.Tx) error {
		if l.IsZero() {
			_, err := tx.ExecContext(ctx, `DELETE FROM sending_limits WHERE kind = ? AND id = ?`, sc.Kind, sc.ID)
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO sending_limits
			(kind, id, per_minute, per_hour, per_day, per_month, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (kind, id) DO UPDATE SET per_minute = excluded.per_minute,
			per_hour = excluded.per_hour, per_day = excluded.per_day, per_month = excluded.per_month,
			updated_at = excluded.updated_at`,
			sc.Kind, sc.ID, l.PerMinute, l.PerHour, l.PerDay, l.PerMonth, us(time.Now()))
		return err
	})
}

// GetLimits implements LimitStore.
func (s *sqliteStore) GetLimits(ctx context.Context, sc LimitScope) (Limits, error) {
	var l Limits
	err := s.r.QueryRowContext(ctx, `SELECT per_minute, per_hour, per_day, per_month
		FROM sending_limits WHERE kind = ? AND id = ?`, sc.Kind, sc.ID).
		Scan(&l.PerMinute, &l.PerHour, &l.PerDay, &l.PerMonth)
	if errors.Is(err, sql.ErrNoRows) {
		return Limits{}, nil
	}
	return l, sqliteErr("get limits", err)
}

// LimitsOf implements LimitStore.
func (s *sqliteStore) LimitsOf(ctx context.Context, scopes []LimitScope) (map[LimitScope]Limits, error) {
	out := make(map[LimitScope]Limits)
	// One query per kind, ids bound as a JSON array.
	byKind := map[string][]string{}
	for _, sc := range scopes {
		byKind[sc.Kind] = append(byKind[sc.Kind], sc.ID)
	}
	for kind, ids := range byKind {
		list, err := jsonStrings(ids)
		if err != nil {
			return nil, fmt.Errorf("limits of: %w", err)
		}
		rows, err := s.r.QueryContext(ctx, `SELECT id, per_minute, per_hour, per_day, per_month
			FROM sending_limits WHERE kind = ? AND id IN (SELECT value FROM json_each(?))`, kind, list)
		if err != nil {
			return nil, sqliteErr("limits of", err)
		}
		for rows.Next() {
			var (
				id string
				l  Limits
			)
			if err := rows.Scan(&id, &l.PerMinute, &l.PerHour, &l.PerDay, &l.PerMonth); err != nil {
				return nil, errors.Join(sqliteErr("limits of", err), rows.Close())
			}
			out[LimitScope{Kind: kind, ID: id}] = l
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, sqliteErr("limits of", err)
		}
	}
	return out, nil
}

// ReserveQuota implements LimitStore. The one write connection serialises
// it with every other write, so read-then-update is atomic.
func (s *sqliteStore) ReserveQuota(ctx context.Context, sc LimitScope, w QuotaWindow, want, ceiling int64) (int64, error) {
	var got int64
	err := s.inTx(ctx, "reserve quota", func(tx *sql.Tx) error {
		var count int64
		err := tx.QueryRowContext(ctx, `SELECT count FROM sending_counts
			WHERE kind = ? AND id = ? AND unit = ? AND window_start = ?`,
			sc.Kind, sc.ID, w.Unit, us(w.Start)).Scan(&count)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		got = reserveAmount(count, want, ceiling)
		if got == 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO sending_counts (kind, id, unit, window_start, window_end, count)
			VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (kind, id, unit, window_start) DO UPDATE SET count = count + excluded.count`,
			sc.Kind, sc.ID, w.Unit, us(w.Start), us(w.End), got)
		return err
	})
	if err != nil {
		return 0, err
	}
	return got, nil
}

// reserveAmount is what a reservation of want adds to count under max.
func reserveAmount(count, want, ceiling int64) int64 {
	return max(0, min(want, ceiling-count))
}

// QuotaUsed implements LimitStore.
func (s *sqliteStore) QuotaUsed(ctx context.Context, sc LimitScope, ws []QuotaWindow) ([]int64, error) {
	out := make([]int64, len(ws))
	for i, w := range ws {
		err := s.r.QueryRowContext(ctx, `SELECT count FROM sending_counts
			WHERE kind = ? AND id = ? AND unit = ? AND window_start = ?`,
			sc.Kind, sc.ID, w.Unit, us(w.Start)).Scan(&out[i])
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, sqliteErr("quota used", err)
		}
	}
	return out, nil
}

// PruneQuota implements LimitStore.
func (s *sqliteStore) PruneQuota(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune quota", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM sending_counts WHERE window_end < ?`, us(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}
