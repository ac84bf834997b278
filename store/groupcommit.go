package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Group commit.
//
// Enqueue hands its message to a committer goroutine and waits. The
// committer takes everything waiting (up to maxBatchMessages items or
// maxBatchBytes bytes), writes all of it in one transaction with the
// backend's batch writer, commits, and only then answers every waiter. So N
// concurrent SMTP sessions cost one fsync (SQLite) or one commit round trip
// (PostgreSQL) instead of N, and none of them gets its 250 before its message
// is durable. Finish goes through a committer too, so the outcomes of N
// relay workers' attempts also share one transaction, with the messages
// that arrived together (pairSpec): one commit for both (SQLite: one
// fsync; PostgreSQL: one WAL flush and one BEGIN/COMMIT).
//
// A waiter whose context ends before the committer took its item gets
// ctx.Err() and its item is never written. Once taken, an item's fate is
// decided by the transaction, so the waiter waits for that answer even if its
// context ends: answering "failed" for a message that then commits would make
// the client send it twice.
//
// A batch may also take in, before it commits, the items that arrive while
// it is being written, and wait, at most gatherWait after it was taken, for
// messages still being received when it was taken (Store.Arriving; SQLite's
// committer does both): a session announces its message when DATA begins
// and withdraws the announcement just before Enqueue. The writer writes
// what it has first and asks for more (commitSpec.write's more) before its
// COMMIT, so it waits only when nothing is left to write. Under load this
// fills each transaction with what was about to arrive anyway, instead of
// committing a few messages and the rest in a transaction of their own;
// every transaction costs a sync and rewrites the pages its batch shares
// (indexes, counters), so bigger batches cost less CPU per message, and the
// messages that joined would have waited for the next commit anyway.
// Nothing is awaited when nothing is announced: a lone session's message
// commits at once.
//
// PostgreSQL's committer spaces its transactions instead (commitSpec.spacing):
// when a commit ends with two messages or more already queued behind it,
// the next transaction begins a few milliseconds after the last one began,
// or once enough items wait, so that at a moderate pace a transaction holds
// several messages and outcomes rather than the two or three that arrived
// during the last one's round trips. A message that finds the committer
// idle, or alone behind a commit, still commits at once.
//
// If a batch transaction fails, nothing of it is stored. When the cause is the
// database being unavailable, every waiter gets that error. A COMMIT whose
// answer was lost is not a failure yet: the backend finds out whether it
// committed (PostgreSQL: resolveCommit) before the waiters are answered, and
// only if it cannot tell do they get ErrOutcomeUnknown, never a "not stored". Otherwise the
// cause may be one bad item (a duplicate message id, say), so the committer
// writes the batch's items again one per transaction and each waiter gets its
// own item's result.

const (
	// maxBatchMessages bounds the items (messages, Finish calls) written in
	// one transaction.
	maxBatchMessages = 256
	// maxBatchBytes bounds the bytes (bodies mostly) written in one transaction.
	maxBatchBytes = 32 << 20
	// gatherWait bounds how long a batch waits for announced messages
	// (Store.Arriving; commitSpec.gather). A message from a slow client may
	// be announced for seconds: a transaction then waits this long, not
	// longer.
	gatherWait = time.Millisecond
	// batchTimeout bounds one batch transaction. The committer does not use a
	// caller's context: a batch holds many callers' messages.
	batchTimeout = 30 * time.Second
)

// errClosed is the error for calls on a closed store, and for waiters still
// queued when it closed. It matches ErrUnavailable: nothing was stored and
// the client should try again later.
var errClosed = fmt.Errorf("%w: store closed", ErrUnavailable)

// commitSpec is what a committer needs to know about its items.
type commitSpec[T any] struct {
	// write writes items in one transaction and commits it. On error
	// nothing is stored. more, if not nil, returns the items that joined
	// the batch since (see batchJoin.more); write writes them in the same
	// transaction and asks again, until it returns none, before it commits.
	write func(ctx context.Context, items []T, more func() []T) error
	// size is what an item counts against maxBatchBytes.
	size func(T) int
	// label names an item's operation in errors, e.g. "enqueue 0123...".
	label func(T) string
	// undo clears what a failed write assigned to an item (recipient ids,
	// counts), before it is written again or answered.
	undo func(T)
	// onCommit is called after a commit with the items it stored.
	onCommit func(stored []T)
	// health, if not nil, records whether each batch transaction
	// committed (readiness).
	health *health
	// linger, if positive, is how long a batch made only of items that
	// lingers reports true may wait for other items to share its
	// transaction; an item that does not linger ends the wait at once.
	// It waits only while such items keep coming: when none arrived for
	// linger, there is nothing to wait for (a queue draining after a
	// burst must not slow its outcomes down).
	linger  time.Duration
	lingers func(T) bool
	// gather, if positive, lets a batch take in the items that arrive while
	// it is written, and is how long after it was taken it waits at most
	// for the items announced (arrive) then.
	gather time.Duration
	// spacing, if positive, is the least time between the starts of two
	// transactions run back to back: when a commit ends with two items or
	// more already queued that space (spaces reports true; nil: every
	// item), the next transaction waits until spacing after the last one
	// began, or until spaceFull items are queued, so that what arrives
	// meanwhile shares it. Items that find the committer idle, or one
	// alone behind a commit, commit at once, so a lone session's message
	// never waits for it; it only acts when the committer has been running
	// one transaction after another, where each transaction's own cost
	// (PostgreSQL: its statements, BEGIN and COMMIT) is paid by fewer
	// items the more often it commits.
	spacing   time.Duration
	spaceFull int
	spaces    func(T) bool
}

// Waiter states.
const (
	waitQueued int32 = iota
	waitTaken
	waitCancelled
)

// waiter is one call waiting for its item's commit.
type waiter[T any] struct {
	item   T
	size   int
	state  atomic.Int32 // waitQueued, then waitTaken (committer) or waitCancelled (caller)
	result chan error   // buffered 1; written once, after the state became waitTaken
}

// committer runs the group-commit loop for one kind of item of one store.
type committer[T any] struct {
	spec commitSpec[T]

	mu     sync.Mutex
	queue  []*waiter[T]                  // waiting to be taken, in arrival order
	closed bool                          // no more items
	taken  int64                         // waiters taken into batches so far (tests observe it)
	writes int64                         // transactions the writer was called for (tests observe it)
	busy   time.Duration                 // spent in commit (stats)
	hist   [len(CommitBuckets) + 1]int64 // batches by time spent in commit (stats)

	kick chan struct{} // buffered 1: the queue may be non-empty
	// lastOther is when an item that does not linger was last added
	// (UnixNano), for spec.linger.
	lastOther atomic.Int64
	// arriving counts the announced items (arriving) not yet added.
	arriving atomic.Int64
	// announced is arriving as it was when takeBudget last took items,
	// read under mu with the queue, so that a batch waits for exactly the
	// items announced when it was taken, whatever is withdrawn while it
	// starts (newJoin). Only the loop's goroutine takes.
	announced int64
	stop      chan struct{} // closed by close
	done      chan struct{} // closed when the loop returned
	once      sync.Once     // guards close
}

// newCommitter starts a committer for spec.
func newCommitter[T any](spec commitSpec[T]) *committer[T] {
	c := &committer[T]{
		spec: spec,
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go c.loop()
	return c
}

// messageSpec is the commitSpec of Enqueue's items: commits wake relay
// workers through wakeCh (unless every message was stored leased), and
// their results go to h.
func messageSpec(write func(context.Context, []*Message, func() []*Message) error, wakeCh chan struct{}, h *health) commitSpec[*Message] {
	return commitSpec[*Message]{
		write:  write,
		health: h,
		size:   messageSize,
		label:  func(m *Message) string { return "enqueue " + m.ID },
		undo:   func(m *Message) { undoRecipientIDs([]*Message{m}) },
		onCommit: func(msgs []*Message) {
			// Messages stored leased went to their relay already: a
			// claim would find nothing.
			for _, m := range msgs {
				if m.Lease == nil {
					wake(wakeCh)
					return
				}
			}
		},
	}
}

// either is one item of a committer of two kinds of item (pairSpec): an A,
// or a B if isB.
type either[A, B any] struct {
	a   A
	b   B
	isB bool
}

// pairSpec is the commitSpec of a committer that writes items of two kinds
// in one transaction: write gets the batch's As and Bs apart. Every other
// part of the spec is the kind's own; health is sa's. A single writer
// (SQLite) commits once for the messages and the outcomes that arrived
// together, instead of once each.
func pairSpec[A, B any](sa commitSpec[A], sb commitSpec[B], write func(ctx context.Context, as []A, bs []B, more func() ([]A, []B)) error) commitSpec[either[A, B]] {
	split := func(items []either[A, B]) (as []A, bs []B) {
		for _, it := range items {
			if it.isB {
				bs = append(bs, it.b)
			} else {
				as = append(as, it.a)
			}
		}
		return as, bs
	}
	return commitSpec[either[A, B]]{
		write: func(ctx context.Context, items []either[A, B], more func() []either[A, B]) error {
			as, bs := split(items)
			var moreAB func() ([]A, []B)
			if more != nil {
				moreAB = func() ([]A, []B) { return split(more()) }
			}
			return write(ctx, as, bs, moreAB)
		},
		size: func(it either[A, B]) int {
			if it.isB {
				return sb.size(it.b)
			}
			return sa.size(it.a)
		},
		label: func(it either[A, B]) string {
			if it.isB {
				return sb.label(it.b)
			}
			return sa.label(it.a)
		},
		undo: func(it either[A, B]) {
			if it.isB {
				sb.undo(it.b)
			} else {
				sa.undo(it.a)
			}
		},
		onCommit: func(items []either[A, B]) {
			as, bs := split(items)
			if len(as) > 0 {
				sa.onCommit(as)
			}
			if len(bs) > 0 {
				sb.onCommit(bs)
			}
		},
		health: sa.health,
	}
}

// undoRecipientIDs forgets the recipient ids a failed write assigned.
func undoRecipientIDs(msgs []*Message) {
	for _, m := range msgs {
		for _, r := range m.Recipients {
			r.ID = 0
		}
	}
}

// add writes item through the next batch and returns that batch's result
// for it.
func (c *committer[T]) add(ctx context.Context, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &waiter[T]{item: item, size: c.spec.size(item), result: make(chan error, 1)}
	if c.spec.linger > 0 && !c.spec.lingers(item) {
		c.lastOther.Store(time.Now().UnixNano())
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", c.spec.label(item), errClosed)
	}
	c.queue = append(c.queue, w)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}

	select {
	case err := <-w.result:
		return err
	case <-ctx.Done():
		if w.state.CompareAndSwap(waitQueued, waitCancelled) {
			return ctx.Err()
		}
		// Taken: the transaction decides.
		return <-w.result
	}
}

// stats reports what the committer has done so far.
func (c *committer[T]) stats() CommitStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CommitStats{Transactions: c.writes, Items: c.taken, Busy: c.busy, Batches: c.hist}
}

// close fails the waiters not yet taken at once, and returns when the loop
// stopped, after the batch in progress (if any) was answered. Safe to call
// twice.
func (c *committer[T]) close() {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		// Answer the queued waiters now, not after the batch in progress.
		c.failQueued()
		close(c.stop)
	})
	<-c.done
}

func (c *committer[T]) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			c.failQueued()
			return
		case <-c.kick:
		}
		var (
			last   time.Time // when the transaction just run began
			behind bool      // items that space were queued when it was written
		)
		for {
			select {
			case <-c.stop:
				c.failQueued()
				return
			default:
			}
			if behind && !c.spaceOut(last) {
				c.failQueued()
				return
			}
			batch := c.take()
			if len(batch) == 0 {
				break
			}
			batch = c.lingerOn(batch)
			last = time.Now()
			behind = c.commit(batch, last)
		}
	}
}

// spaceOut waits, after a transaction that began at last, while
// spec.spacing says the next one should (see commitSpec.spacing). It
// reports false if the committer stopped meanwhile.
func (c *committer[T]) spaceOut(last time.Time) bool {
	if c.spec.spacing <= 0 {
		return true
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		wait := c.spec.spacing - time.Since(last)
		if wait <= 0 || !c.spacedQueue() {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-c.kick: // an item was queued: look again
		case <-timer.C:
			return true
		case <-c.stop:
			return false
		}
	}
}

// spacedQueue reports whether the queue holds at least two items that
// space, and fewer than spec.spaceFull items. One alone is no sign of a
// pace worth waiting for: a lone session has one message at a time.
func (c *committer[T]) spacedQueue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) >= c.spec.spaceFull {
		return false
	}
	n := 0
	for _, w := range c.queue {
		if w.state.Load() == waitQueued && (c.spec.spaces == nil || c.spec.spaces(w.item)) {
			n++
		}
	}
	return n >= 2
}

// lingerOn returns batch, and if every item of it lingers, what else
// arrived within spec.linger: it waits until an item that does not linger
// is taken, the batch is full, the time is up or the committer stops.
func (c *committer[T]) lingerOn(batch []*waiter[T]) []*waiter[T] {
	if c.spec.linger <= 0 || !c.allLinger(batch) ||
		time.Since(time.Unix(0, c.lastOther.Load())) > c.spec.linger {
		return batch
	}
	return c.collect(batch, c.spec.linger, func(_, more []*waiter[T]) bool { return !c.allLinger(more) })
}

// collect adds to batch what is added within d: it returns when done
// reports true of the batch and the items just taken, the batch is full,
// the time is up (with what is queued then) or the committer stops.
func (c *committer[T]) collect(batch []*waiter[T], d time.Duration, done func(batch, more []*waiter[T]) bool) []*waiter[T] {
	t := time.NewTimer(d)
	defer t.Stop()
	for len(batch) < maxBatchMessages {
		select {
		case <-c.kick:
		case <-t.C:
			return append(batch, c.takeUpTo(maxBatchMessages-len(batch))...)
		case <-c.stop:
			return batch
		}
		more := c.takeUpTo(maxBatchMessages - len(batch))
		batch = append(batch, more...)
		if done(batch, more) {
			return batch
		}
	}
	return batch
}

// arrive announces an item that is on its way (Store.Arriving); the
// returned func withdraws the announcement, once however often it is
// called: just before the item is added, or when it will not be.
func (c *committer[T]) arrive() (done func()) {
	c.arriving.Add(1)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			c.arriving.Add(-1)
			// A gathering batch may be waiting for this one only.
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
	}
}

// batchJoin is a batch being written, which the items that arrive
// meanwhile may join (commitSpec.gather).
type batchJoin[T any] struct {
	c     *committer[T]
	batch []*waiter[T] // taken so far
	bytes int          // their sizes
	// want is how many items the batch waits for: those taken with it and
	// those announced then (an announcement is withdrawn just before its
	// item is added, so "none announced now" would not mean "all added").
	want     int
	deadline time.Time // no waiting after this
}

// newJoin starts the join of batch, which was just taken.
func (c *committer[T]) newJoin(batch []*waiter[T]) *batchJoin[T] {
	j := &batchJoin[T]{c: c, batch: batch, want: len(batch) + int(c.announced),
		deadline: time.Now().Add(c.spec.gather)}
	for _, w := range batch {
		j.bytes += w.size
	}
	return j
}

// more takes the items queued since the batch (or the last call) was taken
// into the batch and returns them; when none are queued and not all the
// items announced when the batch was taken have joined, it waits for them
// until the deadline. It returns nothing once the batch is full, nothing is
// left to wait for, or the committer stops: the writer then commits.
func (j *batchJoin[T]) more() []T {
	c := j.c
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for len(j.batch) < maxBatchMessages {
		ws, full := c.takeBudget(maxBatchMessages-len(j.batch), j.bytes)
		if len(ws) > 0 {
			items := make([]T, len(ws))
			for i, w := range ws {
				items[i] = w.item
				j.bytes += w.size
			}
			j.batch = append(j.batch, ws...)
			return items
		}
		wait := time.Until(j.deadline)
		if len(j.batch) >= j.want || wait <= 0 || full {
			// (Items queued that did not fit wait for the next batch:
			// nothing more can join this one. An item queued since
			// takeBudget looked is taken on the next turn.)
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-c.kick:
		case <-timer.C:
			j.deadline = time.Time{}
		case <-c.stop:
			return nil
		}
	}
	return nil
}

// allLinger reports whether every item of ws lingers.
func (c *committer[T]) allLinger(ws []*waiter[T]) bool {
	for _, w := range ws {
		if !c.spec.lingers(w.item) {
			return false
		}
	}
	return true
}

// take removes the next batch from the queue, marking its waiters taken and
// dropping those whose callers gave up.
func (c *committer[T]) take() []*waiter[T] {
	return c.takeUpTo(maxBatchMessages)
}

// takeUpTo is take of at most max items.
func (c *committer[T]) takeUpTo(max int) []*waiter[T] {
	ws, _ := c.takeBudget(max, 0)
	return ws
}

// takeBudget is take of at most max items for a batch that holds used
// bytes already (an empty one takes its first item whatever its size);
// full reports that it left items queued because they did not fit.
func (c *committer[T]) takeBudget(max, used int) (batch []*waiter[T], full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	bytes := used
	i := 0
	for ; i < len(c.queue); i++ {
		w := c.queue[i]
		if len(batch) >= max || (bytes > 0 && bytes+w.size > maxBatchBytes) {
			break
		}
		if !w.state.CompareAndSwap(waitQueued, waitTaken) {
			continue // cancelled
		}
		batch = append(batch, w)
		bytes += w.size
	}
	c.taken += int64(len(batch))
	if len(batch) > 0 {
		c.announced = c.arriving.Load()
	}
	rest := copy(c.queue, c.queue[i:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	return batch, rest > 0
}

// record counts a batch begun at start, before its waiters are answered
// (stats then include it when they return).
func (c *committer[T]) record(start time.Time) {
	took := time.Since(start)
	b := 0
	for b < len(CommitBuckets) && took > CommitBuckets[b] {
		b++
	}
	c.mu.Lock()
	c.busy += took
	c.hist[b]++
	c.mu.Unlock()
}

// commit writes one batch, taken at start, with the items that join it
// meanwhile (spec.gather), and answers their waiters. behind reports
// whether items that space (spec.spacing) were queued once it was
// written, before its waiters were answered.
func (c *committer[T]) commit(batch []*waiter[T], start time.Time) (behind bool) {
	items := make([]T, len(batch))
	for i, w := range batch {
		items[i] = w.item
	}
	var more func() []T
	var j *batchJoin[T]
	if c.spec.gather > 0 {
		j = c.newJoin(batch)
		more = j.more
	}
	items, err := c.writeOnce(items, more)
	if j != nil {
		batch = j.batch
	}
	// Looked at before the waiters are answered: what they send next
	// finds the committer idle, not behind this transaction.
	behind = c.spec.spacing > 0 && c.spacedQueue()
	if c.spec.health != nil {
		c.spec.health.observe(err)
	}
	if err == nil {
		c.record(start)
		for _, w := range batch {
			w.result <- nil
		}
		c.spec.onCommit(items)
		return behind
	}
	if len(batch) == 1 || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrOutcomeUnknown) {
		c.record(start)
		// Writing an item again after ErrOutcomeUnknown could store it
		// twice: its waiter learns that its outcome is unknown.
		for _, w := range batch {
			w.result <- fmt.Errorf("%s: %w", c.spec.label(w.item), err)
		}
		return behind
	}
	// Perhaps one bad item: isolate it.
	var stored []T
	for _, w := range batch {
		_, err := c.writeOnce([]T{w.item}, nil)
		if err != nil {
			err = fmt.Errorf("%s: %w", c.spec.label(w.item), err)
		} else {
			stored = append(stored, w.item)
		}
		w.result <- err
	}
	c.record(start)
	if len(stored) > 0 {
		c.spec.onCommit(stored)
	}
	return behind
}

// writeOnce runs the batch writer with its own deadline and undoes what it
// may have assigned to the items when it fails. It returns the items
// written: items, and those more gave the writer.
func (c *committer[T]) writeOnce(items []T, more func() []T) ([]T, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	var pull func() []T
	if more != nil {
		pull = func() []T {
			m := more()
			items = append(items, m...)
			return m
		}
	}
	err := c.spec.write(ctx, items, pull)
	if err != nil {
		for _, it := range items {
			c.spec.undo(it)
		}
	}
	return items, err
}

// failQueued answers every waiter still queued with errClosed.
func (c *committer[T]) failQueued() {
	c.mu.Lock()
	q := c.queue
	c.queue = nil
	c.mu.Unlock()
	for _, w := range q {
		if w.state.CompareAndSwap(waitQueued, waitTaken) {
			w.result <- fmt.Errorf("%s: %w", c.spec.label(w.item), errClosed)
		}
	}
}
