package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

const sqliteSubCols = `id, name, status, created_at, updated_at`

func scanSQLiteSub(sc scanner) (*Subaccount, error) {
	var (
		s                Subaccount
		created, updated int64
	)
	if err := sc.Scan(&s.ID, &s.Name, &s.Status, &created, &updated); err != nil {
		return nil, err
	}
	s.CreatedAt, s.UpdatedAt = fromUS(created), fromUS(updated)
	return &s, nil
}

// CreateSubaccount implements Store.
func (s *sqliteStore) CreateSubaccount(ctx context.Context, sa *Subaccount) error {
	if sa.ID < 0 {
		return fmt.Errorf("create subaccount: negative id %d", sa.ID)
	}
	if sa.Status == "" {
		sa.Status = SubaccountActive
	}
	now := utc(time.Now())
	sa.CreatedAt, sa.UpdatedAt = now, now
	return s.inTx(ctx, "create subaccount", func(tx *sql.Tx) error {
		var id any // NULL: the next id
		if sa.ID > 0 {
			id = sa.ID
		}
		return tx.QueryRowContext(ctx, `INSERT INTO subaccounts (id, name, status, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?) RETURNING id`, id, sa.Name, sa.Status, us(now), us(now)).Scan(&sa.ID)
	})
}

// GetSubaccount implements Store.
func (s *sqliteStore) GetSubaccount(ctx context.Context, id int64) (*Subaccount, error) {
	sa, err := scanSQLiteSub(s.r.QueryRowContext(ctx, `SELECT `+sqliteSubCols+` FROM subaccounts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get subaccount %d: %w", id, ErrNotFound)
	}
	return sa, sqliteErr("get subaccount", err)
}

// ListSubaccounts implements Store.
func (s *sqliteStore) ListSubaccounts(ctx context.Context) ([]*Subaccount, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+sqliteSubCols+` FROM subaccounts ORDER BY id`)
	if err != nil {
		return nil, sqliteErr("list subaccounts", err)
	}
	defer rows.Close()
	var out []*Subaccount
	for rows.Next() {
		sa, err := scanSQLiteSub(rows)
		if err != nil {
			return nil, sqliteErr("list subaccounts", err)
		}
		out = append(out, sa)
	}
	return out, sqliteErr("list subaccounts", rows.Err())
}

// UpdateSubaccount implements Store.
func (s *sqliteStore) UpdateSubaccount(ctx context.Context, sa *Subaccount) (int64, error) {
	now := utc(time.Now())
	var n int64
	err := s.inTx(ctx, "update subaccount", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE subaccounts SET name = ?, status = ?, updated_at = ? WHERE id = ?`,
			sa.Name, sa.Status, us(now), sa.ID)
		if err := oneRow(res, err, fmt.Sprint(sa.ID)); err != nil {
			return err
		}
		n, err = sqliteApplySubStatus(ctx, tx, now)
		return err
	})
	if err != nil {
		return 0, err
	}
	sa.UpdatedAt = now
	if n > 0 {
		wake(s.wake)
	}
	return n, nil
}

// ApplySubaccountStatus implements Store.
func (s *sqliteStore) ApplySubaccountStatus(ctx context.Context) (int64, error) {
	var n int64
	err := s.inTx(ctx, "apply subaccount status", func(tx *sql.Tx) error {
		var err error
		n, err = sqliteApplySubStatus(ctx, tx, utc(time.Now()))
		return err
	})
	if n > 0 {
		wake(s.wake)
	}
	return n, err
}

// sqliteApplySubStatus holds, releases and drops queued recipients
// according to their subaccount's status (see ApplySubaccountStatus).
func sqliteApplySubStatus(ctx context.Context, tx *sql.Tx, now time.Time) (int64, error) {
	// Unleased queued or deferred recipients of subaccounts in a status.
	const pending = `state IN ('queued', 'deferred') AND (lease_until IS NULL OR lease_until <= ?)
		AND message_id IN (SELECT m.id FROM messages m JOIN subaccounts s ON s.id = m.subaccount
			WHERE m.subaccount <> 0 AND s.status = ?)`
	var total int64
	res, err := tx.ExecContext(ctx, `UPDATE recipients SET next_attempt = ?, updated_at = ?
		WHERE next_attempt <> ? AND `+pending, us(HeldUntil), us(now), us(HeldUntil), us(now), SubaccountSuspended)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	total += n
	res, err = tx.ExecContext(ctx, `UPDATE recipients SET next_attempt = ?, updated_at = ?
		WHERE next_attempt = ? AND `+pending, us(now), us(now), us(HeldUntil), us(now), SubaccountActive)
	if err != nil {
		return 0, err
	}
	n, _ = res.RowsAffected()
	total += n

	rows, err := tx.QueryContext(ctx, `SELECT r.id, r.address, m.id, m.key_id, m.subaccount, m.campaign_id, m.msys_api
		FROM recipients r JOIN messages m ON m.id = r.message_id
		JOIN subaccounts s ON s.id = m.subaccount
		WHERE m.subaccount <> 0 AND s.status = ? AND r.state IN ('queued', 'deferred')
			AND (r.lease_until IS NULL OR r.lease_until <= ?)`, SubaccountTerminated, us(now))
	if err != nil {
		return 0, err
	}
	var (
		ids []any
		evs []Event
	)
	for rows.Next() {
		var (
			id   int64
			ev   Event
			msys sql.NullString
		)
		if err := rows.Scan(&id, &ev.Recipient, &ev.MessageID, &ev.KeyID, &ev.Subaccount, &ev.CampaignID, &msys); err != nil {
			return 0, errors.Join(err, rows.Close())
		}
		ev.Type, ev.Time, ev.Reply = EventPolicyRejection, now, SubaccountDroppedReply
		if msys.Valid {
			ev.Metadata, ev.Tags = MsysEventFields([]byte(msys.String))
		}
		ids = append(ids, id)
		evs = append(evs, ev)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, err
	}
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		args := append([]any{us(now), SubaccountDroppedReply}, chunk...)
		if _, err := tx.ExecContext(ctx, `UPDATE recipients SET state = 'bounced', updated_at = ?, last_reply = ?,
			lease_owner = NULL, lease_until = NULL WHERE id IN (`+placeholders(len(chunk))+`)`, args...); err != nil {
			return 0, err
		}
	}
	if err := insertSQLiteEvents(ctx, tx, evs); err != nil {
		return 0, err
	}
	return total + int64(len(evs)), nil
}
