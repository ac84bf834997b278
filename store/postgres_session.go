package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Console sessions on PostgreSQL (see session.go).

// CreateSession implements SessionStore.
func (s *pgStore) CreateSession(ctx context.Context, ss *Session) error {
	now := utc(time.Now())
	if ss.CreatedAt.IsZero() {
		ss.CreatedAt = now
	}
	if ss.LastSeenAt.IsZero() {
		ss.LastSeenAt = ss.CreatedAt
	}
	ss.CreatedAt, ss.LastSeenAt = utc(ss.CreatedAt), utc(ss.LastSeenAt)
	_, err := s.pool.Exec(ctx, `INSERT INTO console_sessions
		(id_hash, key_id, key_hash, client_ip, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		ss.IDHash, ss.KeyID, ss.KeyHash, ss.ClientIP, ss.CreatedAt, ss.LastSeenAt)
	return pgErr("create session", err)
}

// GetSession implements SessionStore.
func (s *pgStore) GetSession(ctx context.Context, idHash []byte) (*Session, error) {
	var ss Session
	err := s.pool.QueryRow(ctx, `SELECT id_hash, key_id, key_hash, client_ip, created_at, last_seen_at
		FROM console_sessions WHERE id_hash = $1`, idHash).
		Scan(&ss.IDHash, &ss.KeyID, &ss.KeyHash, &ss.ClientIP, &ss.CreatedAt, &ss.LastSeenAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get session: %w", ErrNotFound)
	}
	if err != nil {
		return nil, pgErr("get session", err)
	}
	ss.CreatedAt, ss.LastSeenAt = ss.CreatedAt.UTC(), ss.LastSeenAt.UTC()
	return &ss, nil
}

// TouchSession implements SessionStore.
func (s *pgStore) TouchSession(ctx context.Context, idHash []byte, at time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE console_sessions SET last_seen_at = $1 WHERE id_hash = $2`, utc(at), idHash)
	return pgOneRow("touch session", "", tag, err)
}

// DeleteSession implements SessionStore.
func (s *pgStore) DeleteSession(ctx context.Context, idHash []byte) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, idHash)
	return pgOneRow("delete session", "", tag, err)
}

// PruneSessions implements SessionStore.
func (s *pgStore) PruneSessions(ctx context.Context, idleBefore time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE last_seen_at < $1`, utc(idleBefore))
	if err != nil {
		return 0, pgErr("prune sessions", err)
	}
	return tag.RowsAffected(), nil
}
