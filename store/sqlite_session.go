package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Console sessions on SQLite (see session.go).

// CreateSession implements SessionStore.
func (s *sqliteStore) CreateSession(ctx context.Context, ss *Session) error {
	now := utc(time.Now())
	if ss.CreatedAt.IsZero() {
		ss.CreatedAt = now
	}
	if ss.LastSeenAt.IsZero() {
		ss.LastSeenAt = ss.CreatedAt
	}
	ss.CreatedAt, ss.LastSeenAt = utc(ss.CreatedAt), utc(ss.LastSeenAt)
	return s.inTx(ctx, "create session", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO console_sessions
			(id_hash, key_id, key_hash, client_ip, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?)`,
			ss.IDHash, ss.KeyID, ss.KeyHash, ss.ClientIP, us(ss.CreatedAt), us(ss.LastSeenAt))
		return err
	})
}

// GetSession implements SessionStore.
func (s *sqliteStore) GetSession(ctx context.Context, idHash []byte) (*Session, error) {
	var (
		ss            Session
		created, seen int64
	)
	err := s.r.QueryRowContext(ctx, `SELECT id_hash, key_id, key_hash, client_ip, created_at, last_seen_at
		FROM console_sessions WHERE id_hash = ?`, idHash).
		Scan(&ss.IDHash, &ss.KeyID, &ss.KeyHash, &ss.ClientIP, &created, &seen)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get session: %w", ErrNotFound)
	}
	if err != nil {
		return nil, sqliteErr("get session", err)
	}
	ss.CreatedAt, ss.LastSeenAt = fromUS(created), fromUS(seen)
	return &ss, nil
}

// TouchSession implements SessionStore.
func (s *sqliteStore) TouchSession(ctx context.Context, idHash []byte, at time.Time) error {
	return s.inTx(ctx, "touch session", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE console_sessions SET last_seen_at = ? WHERE id_hash = ?`,
			us(utc(at)), idHash)
		return oneRow(res, err, "session")
	})
}

// DeleteSession implements SessionStore.
func (s *sqliteStore) DeleteSession(ctx context.Context, idHash []byte) error {
	return s.inTx(ctx, "delete session", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE id_hash = ?`, idHash)
		return oneRow(res, err, "session")
	})
}

// PruneSessions implements SessionStore.
func (s *sqliteStore) PruneSessions(ctx context.Context, idleBefore time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune sessions", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE last_seen_at < ?`, us(utc(idleBefore)))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}
