package store

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
	"time"
)

func TestSessionLifecycle(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		id := sha256.Sum256([]byte("session-1"))
		kh := sha256.Sum256([]byte("key-1"))
		created := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
		ss := &Session{IDHash: id[:], KeyID: "0123456789abcdef", KeyHash: kh[:], ClientIP: "127.0.0.1", CreatedAt: created}
		if err := e.s.CreateSession(ctx, ss); err != nil {
			t.Fatalf("create: %v", err)
		}
		if err := e.s.CreateSession(ctx, &Session{IDHash: id[:], KeyID: "x", KeyHash: kh[:]}); !errors.Is(err, ErrExists) {
			t.Fatalf("create duplicate: got %v, want ErrExists", err)
		}
		got, err := e.s.GetSession(ctx, id[:])
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if !bytes.Equal(got.IDHash, id[:]) || got.KeyID != ss.KeyID || !bytes.Equal(got.KeyHash, kh[:]) ||
			got.ClientIP != "127.0.0.1" || !got.CreatedAt.Equal(created) || !got.LastSeenAt.Equal(created) {
			t.Fatalf("get: %+v, want %+v", got, ss)
		}
		seen := created.Add(30 * time.Minute)
		if err := e.s.TouchSession(ctx, id[:], seen); err != nil {
			t.Fatalf("touch: %v", err)
		}
		if got, err = e.s.GetSession(ctx, id[:]); err != nil || !got.LastSeenAt.Equal(seen) {
			t.Fatalf("after touch: %+v, %v; want last seen %v", got, err, seen)
		}

		// A second session, idle longer, is pruned; the first stays.
		old := sha256.Sum256([]byte("session-2"))
		if err := e.s.CreateSession(ctx, &Session{IDHash: old[:], KeyID: "k2", KeyHash: kh[:], CreatedAt: created}); err != nil {
			t.Fatalf("create second: %v", err)
		}
		n, err := e.s.PruneSessions(ctx, created.Add(time.Minute))
		if err != nil || n != 1 {
			t.Fatalf("prune: %d, %v; want 1", n, err)
		}
		if _, err := e.s.GetSession(ctx, old[:]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("pruned session: got %v, want ErrNotFound", err)
		}

		if err := e.s.DeleteSession(ctx, id[:]); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := e.s.GetSession(ctx, id[:]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("get deleted: got %v, want ErrNotFound", err)
		}
		if err := e.s.DeleteSession(ctx, id[:]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("delete twice: got %v, want ErrNotFound", err)
		}
		if err := e.s.TouchSession(ctx, id[:], seen); !errors.Is(err, ErrNotFound) {
			t.Fatalf("touch deleted: got %v, want ErrNotFound", err)
		}
	})
}
