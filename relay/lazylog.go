package relay

import (
	"context"
	"log/slog"
)

// lazyAttrs is a slog.Handler that adds attrs only to records it handles.
// A job's logger carries its message id, domain and recipient count, and
// slog.Logger.With formats them at once: for every job, although a job
// that goes well logs nothing at the default level. lazyAttrs formats
// them when a line is written, in the same place With would have put them.
type lazyAttrs struct {
	slog.Handler
	attrs []slog.Attr
}

// withLazy returns log with attrs added as by log.With, formatted only
// when a record is written.
func withLazy(log *slog.Logger, attrs ...slog.Attr) *slog.Logger {
	return slog.New(lazyAttrs{Handler: log.Handler(), attrs: attrs})
}

// Handle implements slog.Handler.
func (h lazyAttrs) Handle(ctx context.Context, r slog.Record) error {
	return h.Handler.WithAttrs(h.attrs).Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h lazyAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	return lazyAttrs{Handler: h.Handler, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

// WithGroup implements slog.Handler.
func (h lazyAttrs) WithGroup(name string) slog.Handler {
	return h.Handler.WithAttrs(h.attrs).WithGroup(name)
}
