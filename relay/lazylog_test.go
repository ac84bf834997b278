package relay

import (
	"bytes"
	"log/slog"
	"testing"
)

// TestWithLazy checks that a lazily attributed logger writes what
// slog.Logger.With would, through further With and WithGroup calls, and
// nothing below its handler's level.
func TestWithLazy(t *testing.T) {
	write := func(lazy bool) string {
		var buf bytes.Buffer
		base := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
			Level: slog.LevelInfo,
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			},
		}))
		attrs := []any{slog.String("msg_id", "m1"), slog.String("domain", "example.org"), slog.Int("rcpts", 2)}
		var log *slog.Logger
		if lazy {
			log = withLazy(base, slog.String("msg_id", "m1"), slog.String("domain", "example.org"), slog.Int("rcpts", 2))
		} else {
			log = base.With(attrs...)
		}
		log.Debug("hidden", "k", 1)
		log.Info("delivered", "host", "mx.example.org")
		log.With("try", 2).Warn("deferred", "reply", "451 4.3.0 later")
		log.WithGroup("g").Info("grouped", "x", "y\nz")
		return buf.String()
	}
	got, want := write(true), write(false)
	if got != want {
		t.Fatalf("withLazy wrote\n%s\nslog.With wrote\n%s", got, want)
	}
	if bytes.Contains([]byte(got), []byte("hidden")) || !bytes.Contains([]byte(got), []byte("msg_id=m1 domain=example.org rcpts=2 host=mx.example.org")) {
		t.Fatalf("unexpected log:\n%s", got)
	}
}
