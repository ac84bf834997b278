package store

import (
	"context"
	"time"
)

// Session is a web console sign-in (package console). The session id the
// browser holds is never stored: IDHash is its SHA-256. KeyHash is the
// SHA-256 of the API key that signed in, as [Key.Hash] holds it, so the
// console can check that key again on every request without knowing it.
type Session struct {
	IDHash     []byte // SHA-256 of the session id; unique
	KeyID      string // the signed-in key's id
	KeyHash    []byte // SHA-256 of the signed-in key
	ClientIP   string // address the sign-in came from
	CreatedAt  time.Time
	LastSeenAt time.Time // last request, recorded at most once a minute by the console
}

// SessionStore keeps console sessions, so that every gateway node sharing
// the store serves them.
type SessionStore interface {
	// CreateSession stores s (CreatedAt and LastSeenAt default to now);
	// ErrExists if its IDHash is taken.
	CreateSession(ctx context.Context, s *Session) error
	// GetSession returns the session with that id hash; ErrNotFound if
	// there is none.
	GetSession(ctx context.Context, idHash []byte) (*Session, error)
	// TouchSession sets the session's LastSeenAt; ErrNotFound if there is
	// no such session.
	TouchSession(ctx context.Context, idHash []byte, at time.Time) error
	// DeleteSession ends a session; ErrNotFound if there is none.
	DeleteSession(ctx context.Context, idHash []byte) error
	// PruneSessions deletes the sessions last seen before idleBefore and
	// returns how many.
	PruneSessions(ctx context.Context, idleBefore time.Time) (int64, error)
}
