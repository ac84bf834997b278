package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

const pgSubCols = `id, name, status, created_at, updated_at`

func scanPGSub(row pgx.Row) (*Subaccount, error) {
	var s Subaccount
	if err := row.Scan(&s.ID, &s.Name, &s.Status, &s.CreatedAt, &s.UpdatedAt); err != nil {
		return nil, err
	}
	s.CreatedAt, s.UpdatedAt = s.CreatedAt.UTC(), s.UpdatedAt.UTC()
	return &s, nil
}

// CreateSubaccount implements Store.
func (s *pgStore) CreateSubaccount(ctx context.Context, sa *Subaccount) error {
	if sa.ID < 0 {
		return fmt.Errorf("create subaccount: negative id %d", sa.ID)
	}
	if sa.Status == "" {
		sa.Status = SubaccountActive
	}
	now := utc(time.Now())
	sa.CreatedAt, sa.UpdatedAt = now, now
	if sa.ID == 0 {
		err := s.pool.QueryRow(ctx, `INSERT INTO subaccounts (name, status, created_at, updated_at)
			VALUES ($1, $2, $3, $3) RETURNING id`, sa.Name, sa.Status, now).Scan(&sa.ID)
		return pgErr("create subaccount", err)
	}
	// An explicit id moves the identity past it, so later ids do not
	// collide with it.
	return s.inTx(ctx, "create subaccount", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO subaccounts (id, name, status, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $4)`, sa.ID, sa.Name, sa.Status, now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT setval(pg_get_serial_sequence('subaccounts', 'id'), max(id)) FROM subaccounts`)
		return err
	})
}

// GetSubaccount implements Store.
func (s *pgStore) GetSubaccount(ctx context.Context, id int64) (*Subaccount, error) {
	sa, err := scanPGSub(s.pool.QueryRow(ctx, `SELECT `+pgSubCols+` FROM subaccounts WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get subaccount %d: %w", id, ErrNotFound)
	}
	return sa, pgErr("get subaccount", err)
}

// ListSubaccounts implements Store.
func (s *pgStore) ListSubaccounts(ctx context.Context) ([]*Subaccount, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+pgSubCols+` FROM subaccounts ORDER BY id`)
	if err != nil {
		return nil, pgErr("list subaccounts", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Subaccount, error) { return scanPGSub(row) })
	return out, pgErr("list subaccounts", err)
}

// UpdateSubaccount implements Store.
func (s *pgStore) UpdateSubaccount(ctx context.Context, sa *Subaccount) (int64, error) {
	now := utc(time.Now())
	var n int64
	err := s.inTx(ctx, "update subaccount", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE subaccounts SET name = $1, status = $2, updated_at = $3 WHERE id = $4`,
			sa.Name, sa.Status, now, sa.ID)
		if err := pgOneRow("update subaccount", strconv.FormatInt(sa.ID, 10), tag, err); err != nil {
			return err
		}
		n, err = pgApplySubStatus(ctx, tx, now)
		return err
	})
	if err != nil {
		return 0, err
	}
	sa.UpdatedAt = now
	return n, nil
}

// ApplySubaccountStatus implements Store.
func (s *pgStore) ApplySubaccountStatus(ctx context.Context) (int64, error) {
	var n int64
	err := s.inTx(ctx, "apply subaccount status", func(tx pgx.Tx) error {
		var err error
		n, err = pgApplySubStatus(ctx, tx, utc(time.Now()))
		return err
	})
	return n, err
}

// pgPendingOf selects the unleased queued or deferred recipients of
// subaccounts in status $2 (now is $1).
const pgPendingOf = `r.state IN ('queued', 'deferred') AND (r.lease_until IS NULL OR r.lease_until <= $1)
	AND r.message_id = m.id AND m.subaccount <> 0 AND s.id = m.subaccount AND s.status = $2`

// pgApplySubStatus holds, releases and drops queued recipients according
// to their subaccount's status (see ApplySubaccountStatus). Released
// recipients wake the relays of every node (NOTIFY, as Enqueue does).
func pgApplySubStatus(ctx context.Context, tx pgx.Tx, now time.Time) (int64, error) {
	tag, err := tx.Exec(ctx, `UPDATE recipients r SET next_attempt = $3, updated_at = $1
		FROM messages m, subaccounts s WHERE r.next_attempt <> $3 AND `+pgPendingOf,
		now, SubaccountSuspended, HeldUntil)
	if err != nil {
		return 0, err
	}
	total := tag.RowsAffected()
	tag, err = tx.Exec(ctx, `UPDATE recipients r SET next_attempt = $1, updated_at = $1
		FROM messages m, subaccounts s WHERE r.next_attempt = $3 AND `+pgPendingOf,
		now, SubaccountActive, HeldUntil)
	if err != nil {
		return 0, err
	}
	if released := tag.RowsAffected(); released > 0 {
		total += released
		if _, err := tx.Exec(ctx, pgNotify, notifyChannel); err != nil {
			return 0, err
		}
	}
	rows, err := tx.Query(ctx, `UPDATE recipients r SET state = 'bounced', updated_at = $1, last_reply = $3,
			lease_owner = NULL, lease_until = NULL
		FROM messages m, subaccounts s WHERE `+pgPendingOf+`
		RETURNING r.address, m.id, m.key_id, m.subaccount, m.campaign_id, m.msys_api`,
		now, SubaccountTerminated, SubaccountDroppedReply)
	if err != nil {
		return 0, err
	}
	evs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		ev := Event{Type: EventPolicyRejection, Time: now, Reply: SubaccountDroppedReply}
		var msys *string
		err := row.Scan(&ev.Recipient, &ev.MessageID, &ev.KeyID, &ev.Subaccount, &ev.CampaignID, &msys)
		if msys != nil {
			ev.Metadata, ev.Tags = MsysEventFields([]byte(*msys))
		}
		return ev, err
	})
	if err != nil {
		return 0, err
	}
	if len(evs) > 0 {
		b := &pgx.Batch{}
		queueEvents(b, evs)
		br := tx.SendBatch(ctx, b)
		if err := errors.Join(readEvents(br, evs), br.Close()); err != nil {
			return 0, err
		}
	}
	return total + int64(len(evs)), nil
}
