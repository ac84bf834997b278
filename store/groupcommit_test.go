package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// Group-commit semantics, observed on SQLite: the test holds the single
// write connection in a transaction, so the committer blocks inside a batch
// while the test arranges who is taken and who is still queued.

// holdWriter opens a write transaction on s's only write connection; the
// committer blocks until it ends.
func holdWriter(t *testing.T, s *sqliteStore) *sql.Tx {
	t.Helper()
	tx, err := s.w.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// If the test fails early, release the writer so Close does not wait.
	t.Cleanup(func() {
		if err := tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
			t.Error(err)
		}
	})
	return tx
}

// awaitTaken waits until the committer took n waiters in all and has
// queued waiting ones.
func awaitTaken[T any](t *testing.T, c *committer[T], n int64, queued int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		taken, q := c.taken, len(c.queue)
		c.mu.Unlock()
		if taken == n && q == queued {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("committer took %d with %d queued, want %d and %d", taken, q, n, queued)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGroupCommitTakenWaiterWaitsForCommit(t *testing.T) {
	t.Parallel()
	s := openEnv(t, "sqlite").s.(*sqliteStore)
	tx := holdWriter(t, s)

	// A is taken into a batch that cannot start: its caller's deadline
	// passes, yet it must get the commit's answer, not a failure.
	a := newMsg(1)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errA := make(chan error, 1)
	go func() { errA <- s.Enqueue(ctx, a) }()
	awaitTaken(t, s.wc, 1, 0)

	// B arrives while the committer is busy: it stays queued, and its
	// caller gives up before it is taken, so it must never be written.
	b := newMsg(1)
	bctx, bcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer bcancel()
	if err := s.Enqueue(bctx, b); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued waiter with expired ctx: %v, want DeadlineExceeded", err)
	}
	<-ctx.Done()
	select {
	case err := <-errA:
		t.Fatalf("taken waiter answered %v before its batch committed", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-errA; err != nil {
		t.Errorf("taken waiter: %v, want nil (its batch committed)", err)
	}
	check := context.Background()
	if _, err := s.GetMessage(check, a.ID); err != nil {
		t.Errorf("taken message not stored: %v", err)
	}
	// Let the committer run any further batch, then check B is absent.
	mustEnqueue(t, s, newMsg(1))
	if _, err := s.GetMessage(check, b.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("cancelled message: %v, want ErrNotFound", err)
	}
}

func TestGroupCommitCloseFailsQueued(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := Open(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	s := st.(*sqliteStore)
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	tx := holdWriter(t, s)

	a := newMsg(1)
	errA := make(chan error, 1)
	go func() { errA <- s.Enqueue(context.Background(), a) }()
	awaitTaken(t, s.wc, 1, 0)
	b := newMsg(1)
	errB := make(chan error, 1)
	go func() { errB <- s.Enqueue(context.Background(), b) }()
	awaitTaken(t, s.wc, 1, 1)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	if err := <-errB; !errors.Is(err, ErrUnavailable) {
		t.Errorf("queued waiter at close: %v, want ErrUnavailable", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-errA; err != nil {
		t.Errorf("batch in progress at close: %v, want nil", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("close: %v", err)
	}

	// Reopen: A is there, B is not.
	s2 := openStore(t, "", dir)
	ctx := context.Background()
	if _, err := s2.GetMessage(ctx, a.ID); err != nil {
		t.Errorf("A after reopen: %v", err)
	}
	if _, err := s2.GetMessage(ctx, b.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("B after reopen: %v, want ErrNotFound", err)
	}
}

// TestGroupCommitBatches checks concurrent callers really share
// transactions: fewer commits than messages.
func TestGroupCommitBatches(t *testing.T) {
	t.Parallel()
	s := openEnv(t, "sqlite").s.(*sqliteStore)
	tx := holdWriter(t, s)
	first := newMsg(1)
	errs := make(chan error, 21)
	go func() { errs <- s.Enqueue(context.Background(), first) }()
	awaitTaken(t, s.wc, 1, 0)
	// 20 more queue up behind the blocked batch...
	for i := 0; i < 20; i++ {
		go func() { errs <- s.Enqueue(context.Background(), newMsg(1)) }()
	}
	awaitTaken(t, s.wc, 1, 20)
	// ...and are taken as one batch.
	batch := s.wc.take()
	if len(batch) != 20 {
		t.Errorf("take() = %d waiters, want 20", len(batch))
	}
	// Put them back for the committer.
	s.wc.mu.Lock()
	for _, w := range batch {
		w.state.Store(waitQueued)
	}
	s.wc.queue = append(batch, s.wc.queue...)
	s.wc.mu.Unlock()
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 21; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	st, err := s.Stats(context.Background())
	if err != nil || st.ByState[StateQueued] != 21 {
		t.Errorf("stats %+v, %v", st, err)
	}
}

// TestSQLiteReadersDoNotWaitForWriter checks reads go to their own pool:
// with a write transaction open (and uncommitted rows in it), reads answer
// at once with the committed state.
func TestSQLiteReadersDoNotWaitForWriter(t *testing.T) {
	t.Parallel()
	s := openEnv(t, "sqlite").s.(*sqliteStore)
	m := newMsg(1)
	mustEnqueue(t, s, m)
	tx := holdWriter(t, s)
	if _, err := tx.Exec(`DELETE FROM messages`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := s.GetMessage(ctx, m.ID)
	if err != nil || got.ID != m.ID {
		t.Fatalf("read during a write transaction: %v", err)
	}
	if _, err := s.ListMessages(ctx, QueueFilter{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	// The read pool cannot write.
	if _, err := s.r.ExecContext(ctx, `DELETE FROM events`); err == nil {
		t.Error("the read pool accepted a write")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
}

// TestGroupCommitOutcomeUnknownIsNotRewritten: a batch whose COMMIT went
// unanswered may be stored, so its items are not written again one by one
// (which would store them twice); every waiter gets ErrOutcomeUnknown.
func TestGroupCommitOutcomeUnknownIsNotRewritten(t *testing.T) {
	var (
		mu     sync.Mutex
		writes int
	)
	release := make(chan struct{})
	c := newCommitter(commitSpec[int]{
		write: func(_ context.Context, items []int, _ func() []int) error {
			mu.Lock()
			writes++
			first := writes == 1
			mu.Unlock()
			if first {
				<-release // let the others queue up behind the first item
				return nil
			}
			return fmt.Errorf("write batch: %w: commit answer lost", ErrOutcomeUnknown)
		},
		size:     func(int) int { return 1 },
		label:    func(i int) string { return fmt.Sprint("item ", i) },
		undo:     func(int) {},
		onCommit: func([]int) {},
	})
	defer c.close()
	errs := make(chan error, 4)
	go func() { errs <- c.add(context.Background(), 0) }()
	awaitTaken(t, c, 1, 0)
	for i := 1; i <= 3; i++ {
		go func() { errs <- c.add(context.Background(), i) }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		n := len(c.queue)
		c.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("items did not queue")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	var unknown int
	for range 4 {
		if err := <-errs; errors.Is(err, ErrOutcomeUnknown) {
			unknown++
		} else if err != nil {
			t.Errorf("unexpected error %v", err)
		}
	}
	if unknown != 3 {
		t.Errorf("%d waiters got ErrOutcomeUnknown, want 3", unknown)
	}
	mu.Lock()
	defer mu.Unlock()
	if writes != 2 {
		t.Errorf("%d transactions for a batch of 3 with an unknown outcome, want 1 (no item written again)", writes-1)
	}
}

// gatherCommitter is a committer of ints whose batches go to the returned
// channel, gathering announced items for up to gather: its writer takes
// every item more gives it into the batch. If hold is not nil, the first
// batch's writer waits for it to close (its statements take a while). An
// item's size (against maxBatchBytes) is its value.
func gatherCommitter(t *testing.T, gather time.Duration, hold <-chan struct{}) (*committer[int], <-chan []int) {
	t.Helper()
	batches := make(chan []int, 16)
	var once sync.Once
	c := newCommitter(commitSpec[int]{
		write: func(_ context.Context, items []int, more func() []int) error {
			if hold != nil {
				once.Do(func() { <-hold })
			}
			b := append([]int(nil), items...)
			if more != nil {
				for m := more(); len(m) > 0; m = more() {
					b = append(b, m...)
				}
			}
			batches <- b
			return nil
		},
		size:     func(i int) int { return max(i, 1) },
		label:    func(i int) string { return fmt.Sprint("item ", i) },
		undo:     func(int) {},
		onCommit: func([]int) {},
		gather:   gather,
	})
	t.Cleanup(c.close)
	return c, batches
}

// nextBatch returns the next batch c wrote, failing after a long wait.
func nextBatch(t *testing.T, batches <-chan []int, why string) []int {
	t.Helper()
	select {
	case b := <-batches:
		return b
	case <-time.After(30 * time.Second):
		t.Fatalf("no batch written: %s", why)
		return nil
	}
}

// TestGroupCommitGathersAnnouncedItems checks a batch waits for the items
// announced when it was taken, and they share its transaction.
func TestGroupCommitGathersAnnouncedItems(t *testing.T) {
	t.Parallel()
	c, batches := gatherCommitter(t, time.Hour, nil)
	done2, done3 := c.arrive(), c.arrive()
	errs := make(chan error, 3)
	go func() { errs <- c.add(context.Background(), 1) }()
	// 1 is taken; its batch waits for the two announced items.
	awaitTaken(t, c, 1, 0)
	done2()
	done2() // a second call does nothing
	go func() { errs <- c.add(context.Background(), 2) }()
	awaitTaken(t, c, 2, 0)
	select {
	case b := <-batches:
		t.Fatalf("batch %v written before the last announced item came", b)
	default:
	}
	done3()
	go func() { errs <- c.add(context.Background(), 3) }()
	if b := nextBatch(t, batches, "announced items never joined"); len(b) != 3 {
		t.Errorf("batch %v, want the 3 items in one transaction", b)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := c.arriving.Load(); n != 0 {
		t.Errorf("%d announcements left, want 0", n)
	}
}

// TestGroupCommitGatherWaitsForNothingUnannounced checks a lone item
// commits at once however long gather is: nothing was announced.
func TestGroupCommitGatherWaitsForNothingUnannounced(t *testing.T) {
	t.Parallel()
	c, batches := gatherCommitter(t, time.Hour, nil)
	if err := c.add(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if b := nextBatch(t, batches, "lone item"); len(b) != 1 {
		t.Errorf("batch %v, want [1]", b)
	}
}

// TestGroupCommitGatherGivesUp checks an announcement withdrawn without an
// item (the session failed) holds the batch back no longer than gather.
func TestGroupCommitGatherGivesUp(t *testing.T) {
	t.Parallel()
	c, batches := gatherCommitter(t, 50*time.Millisecond, nil)
	done := c.arrive()
	errs := make(chan error, 1)
	go func() { errs <- c.add(context.Background(), 1) }()
	awaitTaken(t, c, 1, 0)
	done()
	if b := nextBatch(t, batches, "batch held by a withdrawn announcement"); len(b) != 1 {
		t.Errorf("batch %v, want [1]", b)
	}
	if err := <-errs; err != nil {
		t.Error(err)
	}
}

// TestGroupCommitLateItemsJoin checks items queued while a batch is being
// written join its transaction (gather > 0, SQLite), and wait for the next
// one without it (PostgreSQL: more is nil).
func TestGroupCommitLateItemsJoin(t *testing.T) {
	t.Parallel()
	for _, gather := range []time.Duration{time.Millisecond, 0} {
		t.Run(fmt.Sprint("gather=", gather), func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			c, batches := gatherCommitter(t, gather, release)
			errs := make(chan error, 3)
			go func() { errs <- c.add(context.Background(), 1) }()
			awaitTaken(t, c, 1, 0)
			for i := 2; i <= 3; i++ {
				go func() { errs <- c.add(context.Background(), i) }()
			}
			awaitTaken(t, c, 1, 2)
			close(release)
			first := nextBatch(t, batches, "first batch")
			if gather > 0 && len(first) != 3 {
				t.Errorf("batch %v, want 1 with the 2 items queued while it was written", first)
			}
			if gather == 0 {
				if len(first) != 1 {
					t.Errorf("batch %v, want [1] alone", first)
				}
				if b := nextBatch(t, batches, "second batch"); len(b) != 2 {
					t.Errorf("batch %v, want the 2 later items", b)
				}
			}
			for range 3 {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			c.mu.Lock()
			writes := c.writes
			c.mu.Unlock()
			if want := map[bool]int64{true: 1, false: 2}[gather > 0]; writes != want {
				t.Errorf("%d transactions, want %d", writes, want)
			}
		})
	}
}

// spacingCommitter is a committer of ints spacing its back-to-back
// transactions by spacing or until full items wait; its batches go to the
// returned channel, and its first batch's writer waits for hold to close.
func spacingCommitter(t *testing.T, spacing time.Duration, full int, hold <-chan struct{}) (*committer[int], <-chan []int) {
	t.Helper()
	batches := make(chan []int, 16)
	var once sync.Once
	c := newCommitter(commitSpec[int]{
		write: func(_ context.Context, items []int, _ func() []int) error {
			once.Do(func() { <-hold })
			batches <- append([]int(nil), items...)
			return nil
		},
		size:      func(int) int { return 1 },
		label:     func(i int) string { return fmt.Sprint("item ", i) },
		undo:      func(int) {},
		onCommit:  func([]int) {},
		spacing:   spacing,
		spaceFull: full,
	})
	t.Cleanup(c.close)
	return c, batches
}

// behindFirst adds item 1, which c takes into a batch held until release
// closes, then items 2 to n+1, which queue behind it; it releases the batch
// and returns once it was written. errs gets every item's result (room for
// one more item).
func behindFirst(t *testing.T, c *committer[int], batches <-chan []int, release chan struct{}, n int) (errs chan error) {
	t.Helper()
	errs = make(chan error, n+2)
	go func() { errs <- c.add(context.Background(), 1) }()
	awaitTaken(t, c, 1, 0)
	for i := 2; i <= n+1; i++ {
		go func() { errs <- c.add(context.Background(), i) }()
	}
	awaitTaken(t, c, 1, n)
	close(release)
	if b := nextBatch(t, batches, "first batch"); !slices.Equal(b, []int{1}) {
		t.Errorf("first batch %v, want [1]", b)
	}
	return errs
}

// TestGroupCommitSpacing checks that items queued behind a transaction
// wait, after it, for more to share the next one (PostgreSQL's spacing),
// until spaceFull of them wait: the spacing here is an hour, so only the
// count can end the wait.
func TestGroupCommitSpacing(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, batches := spacingCommitter(t, time.Hour, 3, release)
	errs := behindFirst(t, c, batches, release, 2)
	// 2 and 3 were queued when the first commit ended: they wait for a
	// third item rather than commit at once.
	awaitTaken(t, c, 1, 2)
	select {
	case b := <-batches:
		t.Fatalf("batch %v written with fewer items queued than spaceFull", b)
	default:
	}
	go func() { errs <- c.add(context.Background(), 4) }()
	if b := nextBatch(t, batches, "spaced batch"); len(b) != 3 {
		t.Errorf("second batch %v, want the 3 items queued after the first", b)
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestGroupCommitSpacingIdle checks that spacing never delays an item that
// finds the committer idle: a lone session's message commits at once, even
// right after a transaction, with a spacing of an hour.
func TestGroupCommitSpacingIdle(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	close(release)
	c, batches := spacingCommitter(t, time.Hour, 64, release)
	for i := 1; i <= 3; i++ {
		if err := c.add(context.Background(), i); err != nil {
			t.Fatal(err)
		}
		if b := nextBatch(t, batches, "lone item"); !slices.Equal(b, []int{i}) {
			t.Errorf("batch %v, want [%d]", b, i)
		}
	}
}

// TestGroupCommitSpacingOneBehind checks that one item queued behind a
// transaction commits right after it: a lone session's message queued
// behind the relay's outcome of its last one does not wait.
func TestGroupCommitSpacingOneBehind(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, batches := spacingCommitter(t, time.Hour, 64, release)
	errs := behindFirst(t, c, batches, release, 1)
	if b := nextBatch(t, batches, "the item queued behind it"); !slices.Equal(b, []int{2}) {
		t.Errorf("second batch %v, want [2]", b)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestGroupCommitSpacingStops checks that closing the committer ends a
// spacing wait and fails the items still queued.
func TestGroupCommitSpacingStops(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, batches := spacingCommitter(t, time.Hour, 64, release)
	errs := behindFirst(t, c, batches, release, 2)
	if err := <-errs; err != nil {
		t.Fatalf("first item: %v", err)
	}
	c.close()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrUnavailable) {
			t.Errorf("item queued when the committer closed: %v, want ErrUnavailable", err)
		}
	}
}

// TestCommitStats checks the committer's counters (smtpgw_store_*): each
// Enqueue and Finish is an item of a transaction, and the time spent shows.
func TestCommitStats(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		s0 := e.s.CommitStats()
		for range 3 {
			if err := e.s.Enqueue(ctx, newMsg(1)); err != nil {
				t.Fatal(err)
			}
		}
		s1 := e.s.CommitStats()
		// One at a time: a transaction each.
		if got := s1.Items - s0.Items; got != 3 {
			t.Errorf("%d items after 3 enqueues, want 3", got)
		}
		if got := s1.Transactions - s0.Transactions; got != 3 {
			t.Errorf("%d transactions after 3 enqueues one at a time, want 3", got)
		}
		if s1.Busy <= s0.Busy {
			t.Errorf("busy %v then %v: no time counted", s0.Busy, s1.Busy)
		}
		if got := batches(s1) - batches(s0); got != 3 {
			t.Errorf("%d batches timed after 3 enqueues one at a time, want 3", got)
		}
		cs := claimN(t, e.s, 2)
		if _, err := e.s.Finish(ctx, "w1", finishDelivered(cs[0])); err != nil {
			t.Fatal(err)
		}
		s2 := e.s.CommitStats()
		if s2.Items-s1.Items < 1 || s2.Transactions <= s1.Transactions || s2.Busy <= s1.Busy {
			t.Errorf("after a Finish: %+v, then %+v; want one more item and transaction, and more time", s1, s2)
		}
	})
}

// batches is how many batches st's commit histogram counts.
func batches(st CommitStats) int64 {
	var n int64
	for _, b := range st.Batches {
		n += b
	}
	return n
}

// TestCommitStatsBuckets checks a batch is counted in the bucket of the
// time it took (smtpgw_store_commit_seconds): a write that takes 30 ms is
// over the 25 ms bucket and within the 50 ms one.
func TestCommitStatsBuckets(t *testing.T) {
	t.Parallel()
	c := newCommitter(commitSpec[int]{
		write: func(context.Context, []int, func() []int) error {
			time.Sleep(30 * time.Millisecond)
			return nil
		},
		size:     func(int) int { return 1 },
		label:    func(i int) string { return fmt.Sprint("item ", i) },
		undo:     func(int) {},
		onCommit: func([]int) {},
	})
	t.Cleanup(c.close)
	if err := c.add(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	st := c.stats()
	i := slices.Index(CommitBuckets[:], 50*time.Millisecond)
	if st.Batches[i] != 1 || batches(st) != 1 {
		t.Errorf("batches %v after one batch of 30 ms: want it in bucket %d (%v)", st.Batches, i, CommitBuckets[i])
	}
	if st.Busy < 30*time.Millisecond {
		t.Errorf("busy %v after a batch of 30 ms", st.Busy)
	}
}

// TestGroupCommitJoinStopsWhenFull checks a batch does not wait for an
// announced item that is queued already but does not fit in it (bytes): it
// commits, and the item goes to the next batch.
func TestGroupCommitJoinStopsWhenFull(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, batches := gatherCommitter(t, time.Hour, release)
	done := c.arrive()
	errs := make(chan error, 2)
	go func() { errs <- c.add(context.Background(), 1) }()
	awaitTaken(t, c, 1, 0)
	done()
	go func() { errs <- c.add(context.Background(), maxBatchBytes) }()
	awaitTaken(t, c, 1, 1)
	close(release)
	if b := nextBatch(t, batches, "batch held for an item that does not fit"); len(b) != 1 || b[0] != 1 {
		t.Errorf("batch %v, want [1]", b)
	}
	if b := nextBatch(t, batches, "the big item"); len(b) != 1 || b[0] != maxBatchBytes {
		t.Errorf("batch %v, want the big item alone", b)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
