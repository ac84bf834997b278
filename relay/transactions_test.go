package relay

import (
	"fmt"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestOneMessageFewestTransactions: a 100-recipient message over several
// domains reaches the smarthost as one transaction although one claim
// takes fewer recipients (4 workers: 8), and as 40+40+20 on one connection
// when the server takes 40 recipients per transaction.
func TestOneMessageFewestTransactions(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		for _, limit := range []int{0, 40} {
			t.Run(fmt.Sprintf("%s/limit%d", kind, limit), func(t *testing.T) {
				t.Parallel()
				st := storetest.Open(t, kind)
				tg := newTarget(t, targetOpts{maxRcpts: limit})
				var rcpts []string
				for i := range 100 {
					rcpts = append(rcpts, fmt.Sprintf("r%d@d%d.test", i, i%3))
				}
				// Enqueued before the relay starts: its first claim sees all.
				enqueue(t, st, "s@src.test", rcpts, testBody("s@src.test", "many"))
				cfg := smarthostConfig(t, tg)
				startRelay(t, cfg, st)
				want := []int{100}
				if limit > 0 {
					want = []int{40, 40, 20}
				}
				got := tg.waitFor(t, "every recipient", func(g []received) bool {
					n := 0
					for _, m := range g {
						n += len(m.to)
					}
					return n >= 100
				})
				var sizes []int
				for _, m := range got {
					sizes = append(sizes, len(m.to))
				}
				if fmt.Sprint(sizes) != fmt.Sprint(want) {
					t.Errorf("transactions of %v recipients, want %v", sizes, want)
				}
				if conns := tg.connCount(); conns != 1 {
					t.Errorf("%d connections, want 1", conns)
				}
			})
		}
	}
}

// TestSMTPUTF8OnlyWhenNeeded: a message submitted with SMTPUTF8 (as Go's
// net/smtp does whenever it is offered) but all ASCII is relayed to a
// server without SMTPUTF8; one with a UTF-8 header bounces with 5.6.7.
func TestSMTPUTF8OnlyWhenNeeded(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{noUTF8: true})
	cfg := smarthostConfig(t, tg)
	startRelay(t, cfg, st)
	utf8 := func(m *store.Message) { m.SMTPUTF8 = true }
	ascii := enqueue(t, st, "s@src.test", []string{"a@dest.test"}, testBody("s@src.test", "plain"), utf8)
	intl := enqueue(t, st, "s@src.test", []string{"b@dest.test"}, "From: s@src.test\r\nSubject: Grüße\r\n\r\nhi\r\n", utf8)
	if s, reply := rcptState(t, waitFinal(t, st, ascii.ID), "a@dest.test"); s != store.StateDelivered {
		t.Errorf("ASCII message declared SMTPUTF8: %s (%s), want delivered", s, reply)
	}
	if s, reply := rcptState(t, waitFinal(t, st, intl.ID), "b@dest.test"); s != store.StateBounced || !strings.Contains(reply, "5.6.7") {
		t.Errorf("UTF-8 header: %s (%s), want bounced 5.6.7", s, reply)
	}
	// The target got the ASCII message without SMTPUTF8 (and the DSN of
	// the other).
	for _, m := range tg.messages() {
		if m.to[0] == "a@dest.test" && m.mailOpts.UTF8 {
			t.Error("the ASCII message was sent with SMTPUTF8")
		}
		if m.to[0] == "b@dest.test" {
			t.Error("the UTF-8 message reached a server without SMTPUTF8")
		}
	}
}
