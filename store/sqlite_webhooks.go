package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

const sqliteWebhookCols = `id, subaccount, name, target, events, active, auth_type, auth, headers, secret, created_at, updated_at`

func scanSQLiteWebhook(sc scanner) (*Webhook, error) {
	var (
		w                Webhook
		sub              sql.NullInt64
		evs, auth, hdrs  string
		created, updated int64
	)
	if err := sc.Scan(&w.ID, &sub, &w.Name, &w.Target, &evs, &w.Active, &w.AuthType, &auth, &hdrs, &w.Secret,
		&created, &updated); err != nil {
		return nil, err
	}
	if sub.Valid {
		w.Subaccount = &sub.Int64
	}
	if err := json.Unmarshal([]byte(evs), &w.Events); err != nil {
		return nil, fmt.Errorf("webhook %s events: %w", w.ID, err)
	}
	w.Auth, w.Headers = json.RawMessage(auth), json.RawMessage(hdrs)
	w.CreatedAt, w.UpdatedAt = fromUS(created), fromUS(updated)
	return &w, nil
}

func nullSub(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// CreateWebhook implements Store.
func (s *sqliteStore) CreateWebhook(ctx context.Context, w *Webhook) error {
	normWebhook(w)
	now := utc(time.Now())
	w.CreatedAt, w.UpdatedAt = now, now
	evs, err := jsonStrings(w.Events)
	if err != nil {
		return err
	}
	return s.inTx(ctx, "create webhook", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO webhooks (id, subaccount, name, target, events, active, auth_type,
			auth, headers, secret, cursor_id, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT coalesce(max(id), 0) FROM events), ?, ?)`,
			w.ID, nullSub(w.Subaccount), w.Name, w.Target, evs, w.Active, w.AuthType, string(w.Auth), string(w.Headers),
			w.Secret, us(now), us(now))
		return err
	})
}

// GetWebhook implements Store.
func (s *sqliteStore) GetWebhook(ctx context.Context, id string) (*Webhook, error) {
	w, err := scanSQLiteWebhook(s.r.QueryRowContext(ctx, `SELECT `+sqliteWebhookCols+` FROM webhooks WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("webhook %s: %w", id, ErrNotFound)
	}
	return w, sqliteErr("get webhook", err)
}

// ListWebhooks implements Store.
func (s *sqliteStore) ListWebhooks(ctx context.Context) ([]*Webhook, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+sqliteWebhookCols+` FROM webhooks ORDER BY created_at, id`)
	if err != nil {
		return nil, sqliteErr("list webhooks", err)
	}
	defer rows.Close()
	var out []*Webhook
	for rows.Next() {
		w, err := scanSQLiteWebhook(rows)
		if err != nil {
			return nil, sqliteErr("list webhooks", err)
		}
		out = append(out, w)
	}
	return out, sqliteErr("list webhooks", rows.Err())
}

// UpdateWebhook implements Store.
func (s *sqliteStore) UpdateWebhook(ctx context.Context, w *Webhook) error {
	normWebhook(w)
	w.UpdatedAt = utc(time.Now())
	evs, err := jsonStrings(w.Events)
	if err != nil {
		return err
	}
	return s.inTx(ctx, "update webhook", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE webhooks SET subaccount = ?, name = ?, target = ?, events = ?, active = ?,
			auth_type = ?, auth = ?, headers = ?, secret = ?, updated_at = ? WHERE id = ?`,
			nullSub(w.Subaccount), w.Name, w.Target, evs, w.Active, w.AuthType, string(w.Auth), string(w.Headers), w.Secret,
			us(w.UpdatedAt), w.ID)
		return rowsOrNotFound(res, err, "webhook "+w.ID)
	})
}

// DeleteWebhook implements Store.
func (s *sqliteStore) DeleteWebhook(ctx context.Context, id string) error {
	return s.inTx(ctx, "delete webhook", func(tx *sql.Tx) error {
		for _, q := range []string{`DELETE FROM webhook_attempts WHERE webhook_id = ?`, `DELETE FROM webhook_batches WHERE webhook_id = ?`} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM webhooks WHERE id = ?`, id)
		return rowsOrNotFound(res, err, "webhook "+id)
	})
}

// rowsOrNotFound turns an update that touched no row into ErrNotFound.
func rowsOrNotFound(res sql.Result, err error, what string) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// WebhookHold implements Store: SQLite's dispatch waits for no
// transaction.
func (s *sqliteStore) WebhookHold(context.Context) (*WebhookHold, error) { return nil, nil }

// DispatchWebhook implements Store. SQLite runs one write transaction at a
// time (BEGIN IMMEDIATE), so event ids become visible in increasing order
// and a cursor on the id never passes an event still to commit.
func (s *sqliteStore) DispatchWebhook(ctx context.Context, id string, limit int, render func([]Event) (*WebhookBatch, error)) (int, error) {
	var n int
	err := s.inTx(ctx, "dispatch webhook", func(tx *sql.Tx) error {
		var cursor int64
		err := tx.QueryRowContext(ctx, `SELECT cursor_id FROM webhooks WHERE id = ?`, id).Scan(&cursor)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("webhook %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+sqliteEventCols+` FROM events WHERE id > ? ORDER BY id LIMIT ?`, cursor, limit)
		if err != nil {
			return err
		}
		var evs []Event
		for rows.Next() {
			e, err := scanSQLiteEvent(rows)
			if err != nil {
				rows.Close()
				return err
			}
			evs = append(evs, e)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		if n = len(evs); n == 0 {
			return nil
		}
		b, err := render(evs)
		if err != nil {
			return err
		}
		if b != nil {
			now := utc(time.Now())
			b.WebhookID, b.State, b.NextAttempt, b.CreatedAt = id, BatchPending, now, now
			if _, err := tx.ExecContext(ctx, `INSERT INTO webhook_batches (id, webhook_id, body, events, state, attempts,
				next_attempt, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)`,
				b.ID, id, b.Body, b.Events, b.State, us(now), us(now), us(now)); err != nil {
				return fmt.Errorf("insert batch: %w", err)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE webhooks SET cursor_id = ? WHERE id = ?`, evs[n-1].ID, id)
		return err
	})
	return n, err
}

const sqliteBatchCols = `id, webhook_id, body, events, state, attempts, next_attempt, created_at`

func scanSQLiteBatch(sc scanner) (*WebhookBatch, error) {
	var (
		b             WebhookBatch
		next, created int64
	)
	if err := sc.Scan(&b.ID, &b.WebhookID, &b.Body, &b.Events, &b.State, &b.Attempts, &next, &created); err != nil {
		return nil, err
	}
	b.NextAttempt, b.CreatedAt = fromUS(next), fromUS(created)
	return &b, nil
}

// ClaimWebhookBatches implements Store.
func (s *sqliteStore) ClaimWebhookBatches(ctx context.Context, owner string, limit int, lease time.Duration) ([]*WebhookBatch, error) {
	if owner == "" || limit <= 0 || lease <= 0 {
		return nil, errors.New("claim webhook batches: need an owner, a positive limit and a positive lease")
	}
	var out []*WebhookBatch
	err := s.inTx(ctx, "claim webhook batches", func(tx *sql.Tx) error {
		now := us(time.Now())
		rows, err := tx.QueryContext(ctx, `UPDATE webhook_batches SET lease_owner = ?, lease_until = ?
			WHERE id IN (SELECT id FROM webhook_batches WHERE state = 'pending' AND next_attempt <= ?
				AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_attempt LIMIT ?)
			RETURNING `+sqliteBatchCols, owner, now+lease.Microseconds(), now, now, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			b, err := scanSQLiteBatch(rows)
			if err != nil {
				return err
			}
			out = append(out, b)
		}
		return rows.Err()
	})
	return out, err
}

// FinishWebhookBatch implements Store.
func (s *sqliteStore) FinishWebhookBatch(ctx context.Context, owner, batchID string, r BatchResult) (bool, error) {
	var ok bool
	err := s.inTx(ctx, "finish webhook batch", func(tx *sql.Tx) error {
		now := us(time.Now())
		res, err := tx.ExecContext(ctx, `UPDATE webhook_batches SET state = ?, next_attempt = ?, attempts = attempts + 1,
			lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ? AND lease_owner = ?`,
			r.State, us(r.NextAttempt), now, batchID, owner)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil || n == 0 {
			return err
		}
		ok = true
		a := r.Attempt
		_, err = tx.ExecContext(ctx, `INSERT INTO webhook_attempts (webhook_id, batch_id, time, attempt, response_code,
			failure, node) VALUES (?, ?, ?, ?, ?, ?, ?)`, a.WebhookID, batchID, us(a.Time), a.Attempt, a.ResponseCode,
			a.Failure, a.Node)
		return err
	})
	return ok, err
}

// WebhookAttempts implements Store.
func (s *sqliteStore) WebhookAttempts(ctx context.Context, webhookID string, limit int) ([]WebhookAttempt, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT batch_id, webhook_id, time, attempt, response_code, failure, node
		FROM webhook_attempts WHERE webhook_id = ? ORDER BY time DESC, id DESC LIMIT ?`, webhookID, limitOr(limit, 1000))
	if err != nil {
		return nil, sqliteErr("webhook attempts", err)
	}
	defer rows.Close()
	var out []WebhookAttempt
	for rows.Next() {
		var (
			a WebhookAttempt
			t int64
		)
		if err := rows.Scan(&a.BatchID, &a.WebhookID, &t, &a.Attempt, &a.ResponseCode, &a.Failure, &a.Node); err != nil {
			return nil, sqliteErr("webhook attempts", err)
		}
		a.Time = fromUS(t)
		out = append(out, a)
	}
	return out, sqliteErr("webhook attempts", rows.Err())
}

// PruneWebhookBatches implements Store.
func (s *sqliteStore) PruneWebhookBatches(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune webhook batches", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM webhook_batches WHERE state IN ('delivered', 'failed') AND updated_at < ?`, us(before))
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM webhook_attempts WHERE time < ?`, us(before))
		return err
	})
	return n, err
}
