package auth

import (
	"net/netip"
	"testing"
	"time"
)

func TestFailureLimiterBlocksAndRecovers(t *testing.T) {
	t.Parallel()
	const max = 3
	l := NewFailureLimiter(max, 600*time.Millisecond)
	ip := netip.MustParseAddr("192.0.2.1")
	other := netip.MustParseAddr("192.0.2.2")

	for round := 1; round <= 2; round++ {
		for i := 1; i < max; i++ {
			if l.Fail(ip) {
				t.Fatalf("round %d: blocked after %d failures, want %d", round, i, max)
			}
			if l.Blocked(ip) {
				t.Fatalf("round %d: Blocked after %d failures, want %d", round, i, max)
			}
		}
		if !l.Fail(ip) {
			t.Fatalf("round %d: Fail #%d did not block", round, max)
		}
		if !l.Blocked(ip) {
			t.Fatalf("round %d: Blocked = false after %d failures", round, max)
		}
		if l.Blocked(other) {
			t.Fatalf("round %d: another address is blocked too", round)
		}
		// Recovery: one attempt comes back after window/max, all of them
		// once the window passed (the idle entry is then swept).
		eventually(t, 10*time.Second, "address still blocked", func() bool { return !l.Blocked(ip) })
		eventually(t, 10*time.Second, "idle entry not swept", func() bool {
			l.Blocked(other) // any access sweeps once per window
			return l.Len() == 0
		})
	}
}

func TestFailureLimiterAddresses(t *testing.T) {
	t.Parallel()
	l := NewFailureLimiter(2, time.Hour)
	block := func(s string) {
		l.Fail(netip.MustParseAddr(s))
		if !l.Fail(netip.MustParseAddr(s)) {
			t.Fatalf("%s not blocked after 2 failures", s)
		}
	}
	blocked := func(s string) bool { return l.Blocked(netip.MustParseAddr(s)) }

	block("::ffff:198.51.100.1") // IPv4-mapped counts as IPv4
	if !blocked("198.51.100.1") {
		t.Error("198.51.100.1 not blocked after failures as ::ffff:198.51.100.1")
	}
	if blocked("198.51.100.2") {
		t.Error("198.51.100.2 blocked by its neighbour's failures")
	}

	block("2001:db8:1:2::1") // IPv6 counts per /64
	if !blocked("2001:db8:1:2:ffff::9") {
		t.Error("same /64 not blocked")
	}
	if blocked("2001:db8:1:3::1") {
		t.Error("other /64 blocked")
	}
	if blocked("127.0.0.1") {
		t.Error("unrelated address blocked")
	}
}

func TestFailureLimiterDisabled(t *testing.T) {
	t.Parallel()
	l := NewFailureLimiter(0, time.Minute)
	ip := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < 100; i++ {
		if l.Fail(ip) {
			t.Fatal("disabled limiter blocked")
		}
	}
	if l.Blocked(ip) || l.Len() != 0 {
		t.Fatal("disabled limiter tracks addresses")
	}
}

func TestFailureLimiterBounded(t *testing.T) {
	t.Parallel()
	l := NewFailureLimiter(5, time.Hour)
	l.maxEntries = 1000
	base := netip.MustParseAddr("10.0.0.0").As4()
	n := l.maxEntries + 100
	for i := 0; i < n; i++ {
		a := base
		a[1], a[2], a[3] = byte(i>>16), byte(i>>8), byte(i)
		l.Fail(netip.AddrFrom4(a))
	}
	if got := l.Len(); got != l.maxEntries {
		t.Fatalf("limiter tracks %d addresses, want the cap %d", got, l.maxEntries)
	}
	// The newest address is tracked.
	last := base
	last[1], last[2], last[3] = byte((n-1)>>16), byte((n-1)>>8), byte(n-1)
	ip := netip.AddrFrom4(last)
	for i := 0; i < 4; i++ {
		l.Fail(ip)
	}
	if !l.Blocked(ip) {
		t.Fatal("newest address not tracked after the cap was reached")
	}
}
