package smtpd

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// fakeHandoff records what the server asks of the relay.
type fakeHandoff struct {
	grant     bool
	onReserve func() // called by Reserve, if set
	waitCtx   bool   // Reserve refuses when its context ends, as a full relay does

	mu       sync.Mutex
	reserved int
	released int
	domains  [][]string
	handed   [][]*store.Claimed
	leases   []store.Lease
}

func (f *fakeHandoff) Reserve(ctx context.Context, n int, domains []string) (store.Lease, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.domains = append(f.domains, domains)
	if f.onReserve != nil {
		f.onReserve()
	}
	if f.waitCtx {
		<-ctx.Done()
		return store.Lease{}, false
	}
	if !f.grant {
		return store.Lease{}, false
	}
	f.reserved += n
	return store.Lease{Owner: "relay-1", Until: time.Now().Add(time.Minute)}, true
}

func (f *fakeHandoff) Handoff(l store.Lease, claimed []*store.Claimed) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leases = append(f.leases, l)
	f.handed = append(f.handed, claimed)
}

func (f *fakeHandoff) Release(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released += n
}

// TestHandoffWaitLeavesCommitItsTime: a wait for the relay's room
// (relay.in_flow_delay) that uses all of its context still leaves the
// commit its own time: the message is stored and answered 250. Not
// parallel: it shortens enqueueTimeout.
func TestHandoffWaitLeavesCommitItsTime(t *testing.T) {
	defer func(d time.Duration) { enqueueTimeout = d }(enqueueTimeout)
	enqueueTimeout = 300 * time.Millisecond
	full := &fakeHandoff{waitCtx: true}
	e := setup(t, "sqlite", func(c *Config) { c.Handoff = full })
	r := e.authedRaw()
	r.cmd(250, "MAIL FROM:<sender@example.com>")
	r.cmd(250, "RCPT TO:<a@example.net>")
	id := r.data(message("sender@example.com"))
	if cs, err := e.st.ClaimDue(context.Background(), "other", store.ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(cs) != 1 || cs[0].MessageID != id {
		t.Errorf("claimed %v (%v): want the message stored for a claim after the wait", cs, err)
	}
}

// TestHandoffToRelay: with room granted, a message is stored leased to the
// relay and handed to it with its ids and body once stored; without room
// it is stored for a claim; when it is not stored, the room is released.
func TestHandoffToRelay(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()

			granted := &fakeHandoff{grant: true}
			e := setup(t, backend, func(c *Config) { c.Handoff = granted })
			r := e.authedRaw()
			r.cmd(250, "MAIL FROM:<sender@example.com>")
			r.cmd(250, "RCPT TO:<a@example.net>")
			r.cmd(250, "RCPT TO:<b@example.org>")
			id := r.data(message("sender@example.com"))
			granted.mu.Lock()
			handed, domains, reserved := granted.handed, granted.domains, granted.reserved
			granted.mu.Unlock()
			if len(handed) != 1 || len(handed[0]) != 2 || reserved != 2 {
				t.Fatalf("handed off %v after reserving %d, want one message of 2 recipients", handed, reserved)
			}
			if strings.Join(domains[0], ",") != "example.net,example.org" {
				t.Errorf("Reserve got domains %v", domains[0])
			}
			for _, c := range handed[0] {
				if c.ID == 0 || c.MessageID != id || !strings.Contains(string(c.Body), "Received: ") || c.KeyID != e.keyID {
					t.Errorf("handed off %+v: want the stored recipient with its body", c)
				}
			}
			if cs, err := e.st.ClaimDue(ctx, "other", store.ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(cs) != 0 {
				t.Errorf("claimed %d (%v) of a handed-off message: it must be stored leased", len(cs), err)
			}
			if _, err := e.st.ReleaseLeases(ctx, "relay-1"); err != nil {
				t.Fatal(err)
			}
			if cs, err := e.st.ClaimDue(ctx, "other", store.ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(cs) != 2 {
				t.Errorf("claimed %d (%v) after the relay-1 leases were released, want 2", len(cs), err)
			}

			refused := &fakeHandoff{}
			e2 := setup(t, backend, func(c *Config) { c.Handoff = refused })
			r2 := e2.authedRaw()
			r2.cmd(250, "MAIL FROM:<sender@example.com>")
			r2.cmd(250, "RCPT TO:<a@example.net>")
			r2.data(message("sender@example.com"))
			if len(refused.handed) != 0 {
				t.Errorf("handed off %d messages without room", len(refused.handed))
			}
			if cs, err := e2.st.ClaimDue(ctx, "other", store.ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(cs) != 1 {
				t.Errorf("claimed %d (%v): a message without room must be stored for a claim", len(cs), err)
			}

			// The store goes away between the reservation and the write:
			// 451, nothing handed off, the room released.
			granted3 := &fakeHandoff{grant: true}
			var e3 *testEnv
			granted3.onReserve = func() {
				if err := e3.st.Close(); err != nil {
					t.Error(err)
				}
			}
			e3 = setup(t, backend, func(c *Config) { c.Handoff = granted3 })
			r3 := e3.authedRaw()
			r3.cmd(250, "MAIL FROM:<sender@example.com>")
			r3.cmd(250, "RCPT TO:<a@example.net>")
			r3.cmd(354, "DATA")
			r3.write(message("sender@example.com") + ".\r\n")
			r3.expect(451)
			granted3.mu.Lock()
			defer granted3.mu.Unlock()
			if len(granted3.handed) != 0 || granted3.reserved != 1 || granted3.released != 1 {
				t.Errorf("store closed: handed off %d, reserved %d, released %d; want 0, 1, 1",
					len(granted3.handed), granted3.reserved, granted3.released)
			}
		})
	}
}
