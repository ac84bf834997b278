package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestClaimExcludeDomains: ClaimDue skips due recipients of the excluded
// domains, and they stay claimable by a claim that does not exclude them.
func TestClaimExcludeDomains(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m := newMsg(6) // example.com and example.org alternately
		m.Recipients = append(m.Recipients,
			&Recipient{Address: "a@example.net", Domain: "example.net"},
			&Recipient{Address: "b@example.net", Domain: "example.net"})
		mustEnqueue(t, e.s, m)

		exclude := []string{"example.com", "example.net", "not-queued.test"}
		a, err := e.s.ClaimDue(ctx, "A", ClaimOptions{Limit: 100, Lease: time.Minute, ExcludeDomains: exclude})
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != 3 {
			t.Fatalf("claimed %d excluding %v, want the 3 at example.org", len(a), exclude)
		}
		for _, c := range a {
			if c.Domain != "example.org" || c.MailFrom != m.MailFrom {
				t.Errorf("claimed %s (domain %q, from %q) excluding %v", c.Address, c.Domain, c.MailFrom, exclude)
			}
			if c.Info.Recipients != len(m.Recipients) {
				t.Errorf("claimed %s: its message has %d recipients, want %d", c.Address, c.Info.Recipients, len(m.Recipients))
			}
		}

		// Everything left is excluded: nothing, and the limit applies
		// after the exclusion.
		none, err := e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 100, Lease: time.Minute,
			ExcludeDomains: []string{"example.com", "example.net"}})
		if err != nil || len(none) != 0 {
			t.Fatalf("claimed %d (%v) with every due domain excluded", len(none), err)
		}
		one, err := e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 2, Lease: time.Minute,
			ExcludeDomains: []string{"example.com"}})
		if err != nil || len(one) != 2 {
			t.Fatalf("claimed %d (%v) excluding example.com, want the 2 at example.net", len(one), err)
		}
		for _, c := range one {
			if c.Domain != "example.net" {
				t.Errorf("claimed %s excluding example.com", c.Address)
			}
		}

		// An empty (or nil) exclusion claims the rest; A's and B's leases
		// still hold.
		rest, err := e.s.ClaimDue(ctx, "C", ClaimOptions{Limit: 100, Lease: time.Minute, ExcludeDomains: []string{}})
		if err != nil || len(rest) != 3 {
			t.Fatalf("claimed %d (%v) without exclusion, want the 3 at example.com", len(rest), err)
		}
		seen := map[int64]bool{}
		for _, cs := range [][]*Claimed{a, one, rest} {
			for _, c := range cs {
				if seen[c.ID] {
					t.Errorf("recipient %s claimed twice", c.Address)
				}
				seen[c.ID] = true
			}
		}
		if len(seen) != len(m.Recipients) {
			t.Errorf("claimed %d distinct recipients, want %d", len(seen), len(m.Recipients))
		}
		if again, err := e.s.ClaimDue(ctx, "D", ClaimOptions{Limit: 100, Lease: time.Minute}); err != nil || len(again) != 0 {
			t.Errorf("claimed %d (%v) while every recipient is leased", len(again), err)
		}
	})
}

// TestClaimExcludePlan: on PostgreSQL the claim with excluded domains still
// finds due recipients through the recipients_due index (the exclusion is a
// filter on what the index yields), not by scanning the table.
func TestClaimExcludePlan(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "postgres")
	ctx := ctxT(t)
	pg, ok := e.s.(*pgStore)
	if !ok {
		t.Fatalf("postgres store is %T", e.s)
	}
	// 3000 recipients, a tenth of them due, as in a queue whose finished
	// messages are waiting to be pruned.
	for i := 0; i < 20; i++ {
		m := newMsg(0)
		for j := 0; j < 150; j++ {
			d := "fast.test"
			if j%3 != 0 {
				d = "slow.test"
			}
			m.Recipients = append(m.Recipients, &Recipient{Address: fmt.Sprintf("r%d-%d@%s", i, j, d), Domain: d})
		}
		mustEnqueue(t, e.s, m)
	}
	if _, err := pg.pool.Exec(ctx, `UPDATE recipients SET state = 'delivered' WHERE id % 10 <> 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.pool.Exec(ctx, `ANALYZE recipients`); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rows, err := pg.pool.Query(ctx, "EXPLAIN "+pgClaimSQL("AND domain <> ALL($5::text[])"), "plan", now.Add(time.Minute), now, 8, []string{"slow.test"})
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "recipients_due") || strings.Contains(plan, "Seq Scan on recipients") {
		t.Errorf("claim excluding a domain does not use recipients_due:\n%s", plan)
	}
	if !strings.Contains(plan, "slow.test") {
		t.Errorf("plan does not show the exclusion:\n%s", plan)
	}
	// And the claim itself skips the excluded domain.
	cs, err := e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 1000, Lease: time.Minute, ExcludeDomains: []string{"slow.test"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) == 0 {
		t.Fatal("claimed nothing excluding slow.test")
	}
	for _, c := range cs {
		if c.Domain != "fast.test" {
			t.Fatalf("claimed %s excluding slow.test", c.Address)
		}
	}
}

// TestClaimPlanSQLite: SQLite's claim (one prepared statement, the domains
// to skip as a JSON array) finds due recipients through recipients_due, not
// by scanning the table.
func TestClaimPlanSQLite(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "sqlite")
	s := e.s.(*sqliteStore)
	rows, err := s.w.QueryContext(ctxT(t), "EXPLAIN QUERY PLAN "+sqliteClaim, "plan", 2, 1, `["slow.test"]`, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	p := strings.Join(plan, "\n")
	if !strings.Contains(p, "recipients_due") || strings.Contains(p, "SCAN recipients\n") || strings.HasSuffix(p, "SCAN recipients") {
		t.Errorf("SQLite claim does not use recipients_due:\n%s", p)
	}
}

// TestClaimLeavesWriterSynced: SQLite's claim commits without syncing the
// WAL (leases may be forgotten by a power cut), and gives the writer back
// with synchronous=FULL, which every message and outcome needs.
func TestClaimLeavesWriterSynced(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "sqlite")
	s := e.s.(*sqliteStore)
	ctx := ctxT(t)
	mustEnqueue(t, s, newMsg(2))
	cs, err := s.ClaimDue(ctx, "w", ClaimOptions{Limit: 10, Lease: time.Minute})
	if err != nil || len(cs) != 2 {
		t.Fatalf("claimed %d (%v), want 2", len(cs), err)
	}
	var level int
	if err := s.w.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != 2 {
		t.Errorf("writer synchronous = %d after a claim, want 2 (FULL)", level)
	}
	// The lease was committed all the same.
	if again, err := s.ClaimDue(ctx, "x", ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(again) != 0 {
		t.Errorf("claimed %d (%v) while both recipients are leased", len(again), err)
	}
}

// TestEnqueueLeased: a message stored under a lease (handed straight to
// the node's relay) is not claimable by anyone until the lease is released
// or runs out; Claimed gives its recipients as a claim would, ids set, and
// its outcome is accepted from the lease owner.
func TestEnqueueLeased(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m := newMsg(2)
		m.Lease = &Lease{Owner: "node-a", Until: time.Now().Add(time.Minute)}
		mustEnqueue(t, e.s, m)
		cs := m.Claimed(false)
		if len(cs) != 2 {
			t.Fatalf("Claimed gave %d recipients, want 2", len(cs))
		}
		for i, c := range cs {
			if c.ID == 0 || c.ID != m.Recipients[i].ID || c.MessageID != m.ID || c.MailFrom != m.MailFrom ||
				string(c.Body) != string(m.Body) || c.Size != int64(len(m.Body)) || c.Info.Recipients != 2 ||
				c.DSNEnvID != m.DSNEnvID || string(c.MsysAPI) != string(m.MsysAPI) {
				t.Errorf("claimed[%d] = %+v, does not match the stored message", i, c)
			}
		}
		if got, err := e.s.ClaimDue(ctx, "node-b", ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(got) != 0 {
			t.Fatalf("claimed %d (%v) of a message stored leased", len(got), err)
		}
		// The owner records an outcome as for a claim.
		n, err := e.s.Finish(ctx, "node-a", Finish{Outcomes: []Outcome{{RecipientID: cs[0].ID, State: StateDelivered, Reply: "250 ok"}}})
		if err != nil || n != 1 {
			t.Fatalf("finish by the lease owner: %d, %v", n, err)
		}
		// Released (as at the owner's stop), the rest is claimable.
		if _, err := e.s.ReleaseLeases(ctx, "node-a"); err != nil {
			t.Fatal(err)
		}
		got, err := e.s.ClaimDue(ctx, "node-b", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(got) != 1 || got[0].ID != cs[1].ID {
			t.Fatalf("after release claimed %d (%v), want the undelivered recipient", len(got), err)
		}
		// Unleased messages are stored as before.
		plain := newMsg(1)
		mustEnqueue(t, e.s, plain)
		if got, err := e.s.ClaimDue(ctx, "node-b", ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(got) != 1 {
			t.Fatalf("claimed %d (%v) of an unleased message, want 1", len(got), err)
		}
	})
}

// TestLeasedEnqueueWakesNoOne: a message stored leased went to its relay
// already, so no relay is woken for it; an unleased one wakes them. (On
// SQLite only: PostgreSQL's NOTIFY channel is shared by every schema of
// the test database, so parallel tests wake each other.)
func TestLeasedEnqueueWakesNoOne(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "sqlite")
	w := e.s.Wakeups()
	drain := func() {
		for {
			select {
			case <-w:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain()
	m := newMsg(1)
	m.Lease = &Lease{Owner: "node-a", Until: time.Now().Add(time.Minute)}
	mustEnqueue(t, e.s, m)
	select {
	case <-w:
		t.Error("a message stored leased woke the relays")
	case <-time.After(300 * time.Millisecond):
	}
	mustEnqueue(t, e.s, newMsg(1))
	select {
	case <-w:
	case <-time.After(10 * time.Second):
		t.Error("an unleased message woke no relay")
	}
}

// TestClaimHintScope: the planner settings the PostgreSQL claim sends
// before its statement (pgClaimHint), JIT off among them, hold for the
// statements of that batch only, not for what the pooled connection runs
// next.
func TestClaimHintScope(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "postgres")
	ctx := ctxT(t)
	pg := e.s.(*pgStore)
	conn, err := pg.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	const settings = `SELECT current_setting('enable_seqscan') || ' ' || current_setting('enable_bitmapscan') || ' ' || current_setting('jit')`
	var jit string
	if err := conn.QueryRow(ctx, `SELECT reset_val FROM pg_settings WHERE name = 'jit'`).Scan(&jit); err != nil {
		t.Fatal(err)
	}
	b := &pgx.Batch{}
	b.Queue(pgClaimHint)
	b.Queue(settings)
	br := conn.SendBatch(ctx, b)
	var in string
	_, err = br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&in)
	}
	if err := errors.Join(err, br.Close()); err != nil {
		t.Fatal(err)
	}
	var after string
	if err := conn.QueryRow(ctx, settings).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if in != "off off off" || after != "on on "+jit {
		t.Errorf("enable_seqscan, enable_bitmapscan, jit: %q in the claim's batch, %q after it; want \"off off off\", \"on on %s\"", in, after, jit)
	}
}

// TestClaimedBody: Claimed(false) copies the body, so the caller may reuse
// its buffer; Claimed(true) hands the buffer over without a copy; a body
// larger than a claim carries is left out either way.
func TestClaimedBody(t *testing.T) {
	t.Parallel()
	m := newMsg(2)
	m.Size = int64(len(m.Body))
	copied, shared := m.Claimed(false), m.Claimed(true)
	want := string(m.Body)
	for i := range m.Body {
		m.Body[i] = 'x'
	}
	for i := range copied {
		if string(copied[i].Body) != want {
			t.Errorf("Claimed(false)[%d] changed with the caller's buffer", i)
		}
		if &shared[i].Body[0] != &m.Body[0] {
			t.Errorf("Claimed(true)[%d] holds a copy, want the caller's buffer", i)
		}
	}
	m.Size = claimBodyMax + 1
	for _, give := range []bool{false, true} {
		if c := m.Claimed(give); c[0].Body != nil {
			t.Errorf("Claimed(%v) of a %d-byte message carries its body", give, m.Size)
		}
	}
}
