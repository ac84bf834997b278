package relay

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestSlowDestinationDoesNotStallOthers: a backlog for a destination whose
// MX never finishes DATA does not keep mail to another domain waiting.
// slow.test's MX blocks every DATA until the test lets it go. Once it holds
// PerDomainConcurrency deliveries, 5 messages to fast.test are enqueued
// behind the 40 to slow.test; they must all be delivered while it blocks,
// and then the 40 exactly once. (Enqueued before the block is seen, fast
// mail could be delivered before slow.test's first DATA even began, and
// the test would show nothing.)
func TestSlowDestinationDoesNotStallOthers(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		const nSlow, nFast = 40, 5
		unblock := make(chan struct{})
		var once sync.Once
		open := func() { once.Do(func() { close(unblock) }) }

		var mu sync.Mutex
		inData, maxInData := 0, 0
		slow := newTarget(t, targetOpts{data: func(int) error {
			mu.Lock()
			inData++
			maxInData = max(maxInData, inData)
			mu.Unlock()
			<-unblock
			mu.Lock()
			inData--
			mu.Unlock()
			return nil
		}})
		// Both MX hosts listen on the port the relay dials: slow.test's on
		// 127.0.0.1, fast.test's on 127.0.0.2.
		fast := newTarget(t, targetOpts{listen: net.JoinHostPort("127.0.0.2", strconv.Itoa(slow.port))})
		dnsAddr := newDNS(t,
			"slow.test. 60 IN MX 10 mx.slow.test.",
			"mx.slow.test. 60 IN A 127.0.0.1",
			"fast.test. 60 IN MX 10 mx.fast.test.",
			"mx.fast.test. 60 IN A 127.0.0.2",
		)

		// The backlog comes first in the queue: the first claim is all
		// slow.test.
		var slowMsgs, fastMsgs []*store.Message
		for i := range nSlow {
			slowMsgs = append(slowMsgs, enqueue(t, st, "s@src.test", []string{fmt.Sprintf("r%d@slow.test", i)},
				testBody("s@src.test", fmt.Sprintf("slow-%d", i))))
		}

		cfg := mxConfig(t, dnsAddr, slow.port)
		cfg.Workers, cfg.PerDomainConcurrency = 4, 2
		// Blocked DATA must not time out (that would defer and resend).
		cfg.CommandTimeout = 5 * time.Minute
		r := startRelay(t, cfg, st)
		t.Cleanup(open) // before Stop (cleanups run last first), so Stop is not stuck

		// slow.test takes every slot it has, and keeps them.
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			n := inData
			mu.Unlock()
			if n == cfg.PerDomainConcurrency {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("slow.test has %d deliveries in DATA after 30 s, want %d", n, cfg.PerDomainConcurrency)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for i := range nFast {
			fastMsgs = append(fastMsgs, enqueue(t, st, "s@src.test", []string{fmt.Sprintf("r%d@fast.test", i)},
				testBody("s@src.test", fmt.Sprintf("fast-%d", i))))
		}

		fast.waitFor(t, "every fast.test message while slow.test blocks", func(got []received) bool {
			return len(got) == nFast
		})
		for _, m := range fastMsgs {
			fm := waitFinal(t, st, m.ID)
			if s, reply := rcptState(t, fm, m.Recipients[0].Address); s != store.StateDelivered {
				t.Errorf("%s: %s (%s), want delivered", m.Recipients[0].Address, s, reply)
			}
		}
		mu.Lock()
		blocked, most := inData, maxInData
		mu.Unlock()
		if n := len(slow.messages()); n != 0 {
			t.Fatalf("slow.test's MX accepted %d messages while blocked", n)
		}
		// The saturated destination is skipped by later claims: the first
		// claim (2×Workers, all slow.test) and the fast.test mail are all
		// the relay took.
		if n := testutil.ToFloat64(r.metrics.claimed); n > float64(2*cfg.Workers+nFast) {
			t.Errorf("claimed %v recipients while slow.test blocks, want at most %d", n, 2*cfg.Workers+nFast)
		}
		if blocked != cfg.PerDomainConcurrency || most != cfg.PerDomainConcurrency {
			t.Errorf("slow.test has %d deliveries in DATA (at most %d), want %d throughout",
				blocked, most, cfg.PerDomainConcurrency)
		}

		open()
		slow.waitFor(t, "every slow.test message", func(got []received) bool { return len(got) >= nSlow })
		for _, m := range slowMsgs {
			fm := waitFinal(t, st, m.ID)
			r := fm.Recipients[0]
			if r.State != store.StateDelivered || r.Attempts != 1 {
				t.Errorf("%s: %s after %d attempts (%s), want delivered after 1", r.Address, r.State, r.Attempts, r.LastReply)
			}
		}
		// Exactly once: nothing more arrives once every outcome is
		// recorded, and each message arrived once.
		got := slow.messages()
		bySubject := countBy(got, func(r received) string { return headerValue(r.data, "Subject") })
		for i := range nSlow {
			if n := bySubject[fmt.Sprintf("slow-%d", i)]; n != 1 {
				t.Errorf("slow-%d arrived %d times, want 1", i, n)
			}
		}
		if len(got) != nSlow {
			t.Errorf("slow.test's MX got %d messages, want %d", len(got), nSlow)
		}
		for _, r := range got {
			if len(r.to) != 1 || !strings.HasSuffix(r.to[0], "@slow.test") {
				t.Errorf("slow.test's MX got a message for %v", r.to)
			}
		}
		if n := len(fast.messages()); n != nFast {
			t.Errorf("fast.test's MX got %d messages, want %d", n, nFast)
		}
	})
}
