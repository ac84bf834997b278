package store

import (
	"testing"
	"time"
)

// TestClaimMessage: ClaimOptions.MessageID (and Domain) claims only the due
// recipients of that message (at that domain), leased ones excluded.
func TestClaimMessage(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m1, m2 := newMsg(6), newMsg(4) // example.com and example.org alternately
		mustEnqueue(t, e.s, m1)
		mustEnqueue(t, e.s, m2)

		first, err := e.s.ClaimDue(ctx, "A", ClaimOptions{Limit: 2, Lease: time.Minute})
		if err != nil || len(first) != 2 || first[0].MessageID != m1.ID {
			t.Fatalf("first claim: %d, %v", len(first), err)
		}
		com, err := e.s.ClaimDue(ctx, "A", ClaimOptions{Limit: 100, Lease: time.Minute, MessageID: m1.ID, Domain: "example.com"})
		if err != nil || len(com) != 2 {
			t.Fatalf("rest of m1 at example.com: %d (%v), want the 2 not yet claimed", len(com), err)
		}
		for _, c := range com {
			if c.MessageID != m1.ID || c.Domain != "example.com" || c.MailFrom != m1.MailFrom {
				t.Errorf("claimed %s of %s", c.Address, c.MessageID)
			}
		}
		all, err := e.s.ClaimDue(ctx, "A", ClaimOptions{Limit: 100, Lease: time.Minute, MessageID: m1.ID})
		if err != nil || len(all) != 2 {
			t.Fatalf("rest of m1: %d (%v), want the 2 at example.org", len(all), err)
		}
		rest, err := e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 100, Lease: time.Minute})
		if err != nil || len(rest) != 4 || rest[0].MessageID != m2.ID {
			t.Fatalf("plain claim after: %d (%v), want m2's 4", len(rest), err)
		}
	})
}
