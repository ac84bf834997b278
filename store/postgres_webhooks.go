package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const pgWebhookCols = `id, subaccount, name, target, events, active, auth_type, auth, headers, secret, created_at, updated_at`

func scanPGWebhook(row pgx.Row) (*Webhook, error) {
	var (
		w          Webhook
		auth, hdrs string
	)
	if err := row.Scan(&w.ID, &w.Subaccount, &w.Name, &w.Target, &w.Events, &w.Active, &w.AuthType, &auth, &hdrs,
		&w.Secret, &w.CreatedAt, &w.UpdatedAt); err != nil {
		return nil, err
	}
	w.Auth, w.Headers = json.RawMessage(auth), json.RawMessage(hdrs)
	w.CreatedAt, w.UpdatedAt = w.CreatedAt.UTC(), w.UpdatedAt.UTC()
	return &w, nil
}

// pgHorizon is the oldest transaction that may still commit: an event
// whose transaction is older is visible to every later reader, one whose
// transaction is not may still be joined by earlier ids.
const pgHorizon = `pg_snapshot_xmin(pg_current_snapshot())`

// CreateWebhook implements Store.
func (s *pgStore) CreateWebhook(ctx context.Context, w *Webhook) error {
	normWebhook(w)
	now := utc(time.Now())
	w.CreatedAt, w.UpdatedAt = now, now
	_, err := s.pool.Exec(ctx, `INSERT INTO webhooks (id, subaccount, name, target, events, active, auth_type,
		auth, headers, secret, cursor_txid, cursor_id, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, `+pgHorizon+`, 0, $11, $11)`,
		w.ID, w.Subaccount, w.Name, w.Target, w.Events, w.Active, w.AuthType, string(w.Auth), string(w.Headers),
		w.Secret, now)
	return pgErr("create webhook", err)
}

// GetWebhook implements Store.
func (s *pgStore) GetWebhook(ctx context.Context, id string) (*Webhook, error) {
	w, err := scanPGWebhook(s.pool.QueryRow(ctx, `SELECT `+pgWebhookCols+` FROM webhooks WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("webhook %s: %w", id, ErrNotFound)
	}
	return w, pgErr("get webhook", err)
}

// ListWebhooks implements Store.
func (s *pgStore) ListWebhooks(ctx context.Context) ([]*Webhook, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+pgWebhookCols+` FROM webhooks ORDER BY created_at, id`)
	if err != nil {
		return nil, pgErr("list webhooks", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Webhook, error) { return scanPGWebhook(row) })
	return out, pgErr("list webhooks", err)
}

// UpdateWebhook implements Store.
func (s *pgStore) UpdateWebhook(ctx context.Context, w *Webhook) error {
	normWebhook(w)
	w.UpdatedAt = utc(time.Now())
	tag, err := s.pool.Exec(ctx, `UPDATE webhooks SET subaccount = $1, name = $2, target = $3, events = $4, active = $5,
		auth_type = $6, auth = $7, headers = $8, secret = $9, updated_at = $10 WHERE id = $11`,
		w.Subaccount, w.Name, w.Target, w.Events, w.Active, w.AuthType, string(w.Auth), string(w.Headers), w.Secret,
		w.UpdatedAt, w.ID)
	return tagOrNotFound(tag, err, "update webhook", "webhook "+w.ID)
}

// DeleteWebhook implements Store (batches and attempts go by cascade).
func (s *pgStore) DeleteWebhook(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM webhooks WHERE id = $1`, id)
	return tagOrNotFound(tag, err, "delete webhook", "webhook "+id)
}

func tagOrNotFound(tag pgconn.CommandTag, err error, op, what string) error {
	if err != nil {
		return pgErr(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %s: %w", op, what, ErrNotFound)
	}
	return nil
}

// WebhookHold implements Store: the transaction at pgHorizon when the
// horizon is below the snapshot's xmax (a newer transaction completed, and
// its events wait), with what pg_stat_activity shows of its session (its
// backend_xid is the 32-bit form of the horizon).
func (s *pgStore) WebhookHold(ctx context.Context) (*WebhookHold, error) {
	var (
		h     WebhookHold
		since *time.Time // NULL when the session is not visible to this role
	)
	err := s.pool.QueryRow(ctx, `WITH h AS (SELECT pg_snapshot_xmin(s)::text::bigint AS xmin,
			pg_snapshot_xmin(s) < pg_snapshot_xmax(s) AS open FROM pg_current_snapshot() s)
		SELECT h.xmin, coalesce(a.pid, 0), a.xact_start, coalesce(a.datname, ''), coalesce(a.usename, ''),
			coalesce(a.application_name, ''), coalesce(a.state, '')
		FROM h LEFT JOIN pg_stat_activity a ON a.backend_xid::text = (h.xmin % 4294967296)::text
		WHERE h.open LIMIT 1`).Scan(&h.XID, &h.PID, &since, &h.Database, &h.User, &h.Application, &h.State)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, pgErr("webhook hold", err)
	}
	if since != nil {
		h.Since = since.UTC()
	}
	return &h, nil
}

// DispatchWebhook implements Store. The webhook row is locked with SKIP
// LOCKED, so while one node dispatches a webhook the others pass it by.
// Events are read in (txid, id) order below the horizon of transactions
// that may still commit (see migration 0006).
func (s *pgStore) DispatchWebhook(ctx context.Context, id string, limit int, render func([]Event) (*WebhookBatch, error)) (int, error) {
	var n int
	err := s.inTx(ctx, "dispatch webhook", func(tx pgx.Tx) error {
		var (
			cursorTxid string
			cursorID   int64
		)
		err := tx.QueryRow(ctx, `SELECT cursor_txid::text, cursor_id FROM webhooks WHERE id = $1 FOR UPDATE SKIP LOCKED`, id).
			Scan(&cursorTxid, &cursorID)
		if errors.Is(err, pgx.ErrNoRows) {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = $1)`, id).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				return fmt.Errorf("webhook %s: %w", id, ErrNotFound)
			}
			return nil // another node holds it
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+pgEventCols+`, txid::text FROM events
			WHERE (txid, id) > ($1::text::xid8, $2) AND txid < `+pgHorizon+`
			ORDER BY txid, id LIMIT $3`, cursorTxid, cursorID, limit)
		if err != nil {
			return err
		}
		var (
			evs      []Event
			lastTxid string
		)
		for rows.Next() {
			var (
				e    Event
				meta []byte
				det  *string
			)
			if err := rows.Scan(&e.ID, &e.Type, &e.Time, &e.MessageID, &e.KeyID, &e.Subaccount, &e.Recipient,
				&e.CampaignID, &meta, &e.Tags, &e.Reply, &det, &lastTxid); err != nil {
				rows.Close()
				return err
			}
			e.Time = e.Time.UTC()
			if meta != nil {
				e.Metadata = meta
			}
			if det != nil {
				if err := decodeDetail([]byte(*det), &e.Detail); err != nil {
					rows.Close()
					return err
				}
			}
			evs = append(evs, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
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
			if _, err := tx.Exec(ctx, `INSERT INTO webhook_batches (id, webhook_id, body, events, state, attempts,
				next_attempt, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6, $6)`,
				b.ID, id, b.Body, b.Events, b.State, now); err != nil {
				return fmt.Errorf("insert batch: %w", err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE webhooks SET cursor_txid = $1::text::xid8, cursor_id = $2 WHERE id = $3`,
			lastTxid, evs[n-1].ID, id)
		return err
	})
	return n, err
}

func scanPGBatch(row pgx.Row) (*WebhookBatch, error) {
	var b WebhookBatch
	if err := row.Scan(&b.ID, &b.WebhookID, &b.Body, &b.Events, &b.State, &b.Attempts, &b.NextAttempt, &b.CreatedAt); err != nil {
		return nil, err
	}
	b.NextAttempt, b.CreatedAt = b.NextAttempt.UTC(), b.CreatedAt.UTC()
	return &b, nil
}

// ClaimWebhookBatches implements Store.
func (s *pgStore) ClaimWebhookBatches(ctx context.Context, owner string, limit int, lease time.Duration) ([]*WebhookBatch, error) {
	if owner == "" || limit <= 0 || lease <= 0 {
		return nil, errors.New("claim webhook batches: need an owner, a positive limit and a positive lease")
	}
	now := utc(time.Now())
	rows, err := s.pool.Query(ctx, `WITH due AS (
			SELECT id FROM webhook_batches WHERE state = 'pending' AND next_attempt <= $3
				AND (lease_until IS NULL OR lease_until <= $3)
			ORDER BY next_attempt LIMIT $4 FOR UPDATE SKIP LOCKED)
		UPDATE webhook_batches b SET lease_owner = $1, lease_until = $2 FROM due WHERE b.id = due.id
		RETURNING b.id, b.webhook_id, b.body, b.events, b.state, b.attempts, b.next_attempt, b.created_at`,
		owner, now.Add(lease), now, limit)
	if err != nil {
		return nil, pgErr("claim webhook batches", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*WebhookBatch, error) { return scanPGBatch(row) })
	return out, pgErr("claim webhook batches", err)
}

// FinishWebhookBatch implements Store.
func (s *pgStore) FinishWebhookBatch(ctx context.Context, owner, batchID string, r BatchResult) (bool, error) {
	var ok bool
	err := s.inTx(ctx, "finish webhook batch", func(tx pgx.Tx) error {
		now := utc(time.Now())
		tag, err := tx.Exec(ctx, `UPDATE webhook_batches SET state = $1, next_attempt = $2, attempts = attempts + 1,
			lease_owner = NULL, lease_until = NULL, updated_at = $3 WHERE id = $4 AND lease_owner = $5`,
			r.State, utc(r.NextAttempt), now, batchID, owner)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		ok = true
		a := r.Attempt
		_, err = tx.Exec(ctx, `INSERT INTO webhook_attempts (webhook_id, batch_id, time, attempt, response_code,
			failure, node) VALUES ($1, $2, $3, $4, $5, $6, $7)`, a.WebhookID, batchID, utc(a.Time), a.Attempt,
			a.ResponseCode, a.Failure, a.Node)
		return err
	})
	return ok, err
}

// WebhookAttempts implements Store.
func (s *pgStore) WebhookAttempts(ctx context.Context, webhookID string, limit int) ([]WebhookAttempt, error) {
	rows, err := s.pool.Query(ctx, `SELECT batch_id, webhook_id, time, attempt, response_code, failure, node
		FROM webhook_attempts WHERE webhook_id = $1 ORDER BY time DESC, id DESC LIMIT $2`, webhookID, limitOr(limit, 1000))
	if err != nil {
		return nil, pgErr("webhook attempts", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookAttempt, error) {
		var a WebhookAttempt
		err := row.Scan(&a.BatchID, &a.WebhookID, &a.Time, &a.Attempt, &a.ResponseCode, &a.Failure, &a.Node)
		a.Time = a.Time.UTC()
		return a, err
	})
	return out, pgErr("webhook attempts", err)
}

// PruneWebhookBatches implements Store.
func (s *pgStore) PruneWebhookBatches(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune webhook batches", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM webhook_batches WHERE state IN ('delivered', 'failed') AND updated_at < $1`, utc(before))
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		_, err = tx.Exec(ctx, `DELETE FROM webhook_attempts WHERE time < $1`, utc(before))
		return err
	})
	return n, err
}
