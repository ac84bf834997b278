package relay

import (
	"context"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestHoldThenReload: in hold mode mail stays queued, untried; a reload to
// a smarthost delivers it, and a later reload to another smarthost sends
// the next message there although a connection to the first is idle.
func TestHoldThenReload(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			a, b := newTarget(t, targetOpts{}), newTarget(t, targetOpts{})
			cfg := smarthostConfig(t, a)
			cfg.Mode = ModeHold
			r := startRelay(t, cfg, st)

			m := enqueue(t, st, "s@src.test", []string{"one@dest.test"}, testBody("s@src.test", "one"))
			// Several claim polls (one a second) pass: nothing is claimed.
			time.Sleep(2500 * time.Millisecond)
			got, err := st.GetMessage(context.Background(), m.ID)
			if err != nil {
				t.Fatal(err)
			}
			if rc := got.Recipients[0]; rc.State != store.StateQueued || rc.Attempts != 0 || len(a.messages()) != 0 {
				t.Fatalf("on hold: recipient %s after %d attempts, %d delivered; want queued and untried",
					rc.State, rc.Attempts, len(a.messages()))
			}

			bad := cfg
			bad.Mode = ModeSmarthost
			bad.Smarthost = "no-port"
			if err := r.Reload(bad); err == nil {
				t.Fatal("reload with a smarthost without port succeeded")
			}
			if r.conf().Mode != ModeHold {
				t.Fatalf("a refused reload changed the mode to %q", r.conf().Mode)
			}

			next := cfg
			next.Mode = ModeSmarthost
			next.Workers = 99 // needs a restart: ignored
			if err := r.Reload(next); err != nil {
				t.Fatal(err)
			}
			if r.conf().Workers != 4 {
				t.Errorf("Workers changed by reload to %d", r.conf().Workers)
			}
			a.waitFor(t, "the held message", func(g []received) bool { return len(g) == 1 })

			next.Smarthost = b.addr
			if err := r.Reload(next); err != nil {
				t.Fatal(err)
			}
			enqueue(t, st, "s@src.test", []string{"two@dest.test"}, testBody("s@src.test", "two"))
			b.waitFor(t, "the message after the second reload", func(g []received) bool { return len(g) == 1 })
			if n := len(a.messages()); n != 1 {
				t.Errorf("the first smarthost got %d messages, want 1", n)
			}
		})
	}
}
