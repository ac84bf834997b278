package limits

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

func TestParse(t *testing.T) {
	t.Parallel()
	good := []struct {
		in   string
		unit Unit
		n    int64
	}{
		{"1000/h", Hour, 1000}, {" 50000/d ", Day, 50000}, {"10/m", Minute, 10}, {"7/MO", Month, 7}, {"0/h", Hour, 0},
	}
	for _, c := range good {
		u, n, err := Parse(c.in)
		if err != nil || u != c.unit || n != c.n {
			t.Errorf("Parse(%q) = %q, %d, %v; want %q, %d", c.in, u, n, err, c.unit, c.n)
		}
	}
	for _, bad := range []string{"", "1000", "1000/w", "x/h", "-1/h", "1000/hours", "/h"} {
		if _, _, err := Parse(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if err := Validate(store.Limits{PerDay: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Validate(negative) = %v", err)
	}
	if s := String(store.Limits{PerHour: 1000, PerDay: 50000}); s != "1000/h, 50000/d" {
		t.Errorf("String = %q", s)
	}
}

func TestWindow(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 31, 23, 59, 30, 5, time.UTC)
	cases := []struct {
		u          Unit
		start, end time.Time
	}{
		{Minute, time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Hour, time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Day, time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Month, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		w := Window(c.u, at.In(time.FixedZone("x", 3600)))
		if !w.Start.Equal(c.start) || !w.End.Equal(c.end) || w.Unit != string(c.u) {
			t.Errorf("Window(%s) = %+v, want %v to %v", c.u, w, c.start, c.end)
		}
	}
}

// clock is a settable time for Checker.now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newChecker(st store.Store, clk *clock) *Checker {
	c := New(st, Config{CacheTTL: time.Hour})
	c.now = clk.now
	return c
}

// exceeded asserts err is an ExceededError for unit u of scope.
func exceeded(t *testing.T, err error, scope store.LimitScope, u Unit) {
	t.Helper()
	var e *ExceededError
	if !errors.As(err, &e) || e.Scope != scope || e.Unit != u {
		t.Fatalf("Reserve = %v, want the %s limit of %+v exceeded", err, u.Name(), scope)
	}
}

// TestReserveKeyLimit: a key's per-minute limit, released quota, the next
// window, and a limit changed on this node.
func TestReserveKeyLimit(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		clk := &clock{t: time.Date(2026, 6, 1, 12, 0, 10, 0, time.UTC)}
		c := newChecker(st, clk)
		defer c.Close()
		key := KeyScope("k1")
		if err := st.SetLimits(ctx, key, store.Limits{PerMinute: 3, PerDay: 100}); err != nil {
			t.Fatal(err)
		}
		var rs []*Reservation
		for range 3 {
			r, err := c.Reserve(ctx, "k1", 0)
			if err != nil {
				t.Fatal(err)
			}
			rs = append(rs, r)
		}
		_, err := c.Reserve(ctx, "k1", 0)
		exceeded(t, err, key, Minute)
		if want := "sending limit of 3 messages per minute for this key reached"; err.Error() != want {
			t.Errorf("error text %q, want %q", err, want)
		}
		// A message that was not stored gives its quota back, once.
		rs[0].Release()
		rs[0].Release()
		if _, err := c.Reserve(ctx, "k1", 0); err != nil {
			t.Errorf("after a release: %v", err)
		}
		_, err = c.Reserve(ctx, "k1", 0)
		exceeded(t, err, key, Minute)
		// Other keys are not limited by it.
		if _, err := c.Reserve(ctx, "k2", 0); err != nil {
			t.Errorf("unlimited key: %v", err)
		}
		// The next minute allows 3 again; the day counts all.
		clk.add(time.Minute)
		for range 3 {
			if _, err := c.Reserve(ctx, "k1", 0); err != nil {
				t.Fatal(err)
			}
		}
		_, used, err := Usages(ctx, st, key, clk.now())
		if err != nil || len(used) != 2 || used[0].Used != 3 || used[1].Used != 6 || used[1].Remaining() != 94 {
			t.Errorf("Usages = %+v, %v; want 3 this minute, 6 today", used, err)
		}
		// Raising the limit on this node applies at once.
		if err := st.SetLimits(ctx, key, store.Limits{PerMinute: 4}); err != nil {
			t.Fatal(err)
		}
		c.Evict(key)
		if _, err := c.Reserve(ctx, "k1", 0); err != nil {
			t.Errorf("after raising the limit: %v", err)
		}
	})
}

// TestReserveSubaccountLimit: a subaccount's limit covers all its keys; the
// master account (0) has none.
func TestReserveSubaccountLimit(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		clk := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
		c := newChecker(st, clk)
		defer c.Close()
		sub := SubaccountScope(7)
		if err := st.SetLimits(ctx, sub, store.Limits{PerMonth: 2}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Reserve(ctx, "a", 7); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Reserve(ctx, "b", 7); err != nil {
			t.Fatal(err)
		}
		_, err := c.Reserve(ctx, "c", 7)
		exceeded(t, err, sub, Month)
		if want := "subaccount 7"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
		if _, err := c.Reserve(ctx, "c", 0); err != nil {
			t.Errorf("master account: %v", err)
		}
		if _, err := c.Reserve(ctx, "c", 8); err != nil {
			t.Errorf("other subaccount: %v", err)
		}
	})
}

// TestReserveAcrossNodes: two nodes on one database share the limits; the
// total never passes them, and a node's unused chunk is the only slack.
func TestReserveAcrossNodes(t *testing.T) {
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			url, dir := "", ""
			if backend == "postgres" {
				url = pgtest.URL(t)
			} else {
				dir = t.TempDir()
			}
			st1 := storetest.OpenURL(t, url, dir)
			st2 := storetest.OpenURL(t, url, dir)
			ctx := context.Background()
			clk := &clock{t: time.Date(2026, 6, 1, 12, 30, 0, 0, time.UTC)}
			n1, n2 := newChecker(st1, clk), newChecker(st2, clk)
			defer n1.Close()
			defer n2.Close()

			// A small limit: chunks of one, exact.
			if err := st1.SetLimits(ctx, KeyScope("small"), store.Limits{PerHour: 10}); err != nil {
				t.Fatal(err)
			}
			ok := 0
			var wg sync.WaitGroup
			var mu sync.Mutex
			for i := range 30 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					n := n1
					if i%2 == 1 {
						n = n2
					}
					_, err := n.Reserve(ctx, "small", 0)
					var e *ExceededError
					switch {
					case err == nil:
						mu.Lock()
						ok++
						mu.Unlock()
					case !errors.As(err, &e):
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if ok != 10 {
				t.Errorf("accepted %d messages over two nodes, want exactly the limit 10", ok)
			}

			// A larger limit: node 1 holds a chunk (1000/50 = 20), node 2
			// gets the rest and no more.
			if err := st1.SetLimits(ctx, KeyScope("big"), store.Limits{PerHour: 1000}); err != nil {
				t.Fatal(err)
			}
			if _, err := n1.Reserve(ctx, "big", 0); err != nil {
				t.Fatal(err)
			}
			got := 0
			for ; got < 2000; got++ {
				_, err := n2.Reserve(ctx, "big", 0)
				if err != nil {
					exceeded(t, err, KeyScope("big"), Hour)
					break
				}
			}
			if got != 980 {
				t.Errorf("node 2 accepted %d, want 980 (1000 minus node 1's chunk of 20)", got)
			}
			// Node 1 still has 19 of its chunk, then it is refused too.
			for i := range 19 {
				if _, err := n1.Reserve(ctx, "big", 0); err != nil {
					t.Fatalf("node 1, message %d of its chunk: %v", i+2, err)
				}
			}
			_, err := n1.Reserve(ctx, "big", 0)
			exceeded(t, err, KeyScope("big"), Hour)
		})
	}
}

// TestReserveStoreDown: a store that cannot answer is a temporary error,
// not a refusal for a limit.
func TestReserveStoreDown(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		c := New(st, Config{})
		defer c.Close()
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := c.Reserve(context.Background(), "k", 3)
		var e *ExceededError
		if err == nil || errors.As(err, &e) {
			t.Errorf("Reserve on a closed store = %v, want a store error", err)
		}
	})
}
