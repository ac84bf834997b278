package relay

import (
	"fmt"
	"testing"

	"github.com/smtpgw/smtpgw/internal/storetest"
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
				tg.mu.Lock()
				conns := tg.conns
				tg.mu.Unlock()
				if conns != 1 {
					t.Errorf("%d connections, want 1", conns)
				}
			})
		}
	}
}
