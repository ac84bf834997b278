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
// committer takes everything waiting (up to maxBatchMessages messages or
// maxBatchBytes bytes), writes all of it in one transaction with the
// backend's batch writer, commits, and only then answers every waiter. So N
// concurrent SMTP sessions cost one fsync (SQLite) or one commit round trip
// (PostgreSQL) instead of N, and none of them gets its 250 before its message
// is durable.
//
// A waiter whose context ends before the committer took its message gets
// ctx.Err() and its message is never written. Once taken, a message's fate is
// decided by the transaction, so the waiter waits for that answer even if its
// context ends: answering "failed" for a message that then commits would make
// the client send it twice.
//
// If a batch transaction fails, nothing of it is stored. When the cause is the
// database being unavailable, every waiter gets that error. Otherwise the
// cause may be one bad message (a duplicate id, say), so the committer writes
// the batch's messages again one per transaction and each waiter gets its own
// message's result.

const (
	// maxBatchMessages bounds the messages written in one transaction.
	maxBatchMessages = 256
	// maxBatchBytes bounds the bytes (bodies mostly) written in one transaction.
	maxBatchBytes = 32 << 20
	// batchTimeout bounds one batch transaction. The committer does not use a
	// caller's context: a batch holds many callers' messages.
	batchTimeout = 30 * time.Second
)

// errClosed is the error for Enqueue calls on a closed store, and for
// waiters still queued when it closed. It matches ErrUnavailable: the
// message was not stored and the client should try again later.
var errClosed = fmt.Errorf("%w: store closed", ErrUnavailable)

// batchWriter writes msgs, their recipients (assigning Recipient.ID) and
// their injection events in one transaction and commits it. On error nothing
// is stored.
type batchWriter func(ctx context.Context, msgs []*Message) error

// Waiter states.
const (
	waitQueued int32 = iota
	waitTaken
	waitCancelled
)

// waiter is one Enqueue call waiting for its commit.
type waiter struct {
	m      *Message
	size   int
	state  atomic.Int32 // waitQueued, then waitTaken (committer) or waitCancelled (caller)
	result chan error   // buffered 1; written once, after the state became waitTaken
}

// committer runs the group-commit loop for one store.
type committer struct {
	write    batchWriter // the backend's one-transaction writer
	onCommit func()      // called after a commit that stored at least one message

	mu     sync.Mutex
	queue  []*waiter // waiting to be taken, in arrival order
	closed bool      // no more enqueues
	taken  int64     // waiters taken into batches so far (tests observe it)

	kick chan struct{} // buffered 1: the queue may be non-empty
	stop chan struct{} // closed by close
	done chan struct{} // closed when the loop returned
	once sync.Once     // guards close
}

// newCommitter starts a committer writing with write.
func newCommitter(write batchWriter, onCommit func()) *committer {
	c := &committer{
		write:    write,
		onCommit: onCommit,
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go c.loop()
	return c
}

// enqueue stores m through the next batch and returns that batch's result
// for m.
func (c *committer) enqueue(ctx context.Context, m *Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &waiter{m: m, size: messageSize(m), result: make(chan error, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("enqueue %s: %w", m.ID, errClosed)
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

// close fails the waiters not yet taken at once, and returns when the loop
// stopped, after the batch in progress (if any) was answered. Safe to call
// twice.
func (c *committer) close() {
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

func (c *committer) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			c.failQueued()
			return
		case <-c.kick:
		}
		for {
			select {
			case <-c.stop:
				c.failQueued()
				return
			default:
			}
			batch := c.take()
			if len(batch) == 0 {
				break
			}
			c.commit(batch)
		}
	}
}

// take removes the next batch from the queue, marking its waiters taken and
// dropping those whose callers gave up.
func (c *committer) take() []*waiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	var batch []*waiter
	bytes := 0
	i := 0
	for ; i < len(c.queue); i++ {
		w := c.queue[i]
		if len(batch) > 0 && (len(batch) >= maxBatchMessages || bytes+w.size > maxBatchBytes) {
			break
		}
		if !w.state.CompareAndSwap(waitQueued, waitTaken) {
			continue // cancelled
		}
		batch = append(batch, w)
		bytes += w.size
	}
	c.taken += int64(len(batch))
	rest := copy(c.queue, c.queue[i:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	return batch
}

// commit writes one batch and answers its waiters.
func (c *committer) commit(batch []*waiter) {
	msgs := make([]*Message, len(batch))
	for i, w := range batch {
		msgs[i] = w.m
	}
	err := c.writeOnce(msgs)
	if err == nil {
		for _, w := range batch {
			w.result <- nil
		}
		c.onCommit()
		return
	}
	if len(batch) == 1 || errors.Is(err, ErrUnavailable) {
		for _, w := range batch {
			w.result <- fmt.Errorf("enqueue %s: %w", w.m.ID, err)
		}
		return
	}
	// Perhaps one bad message: isolate it.
	stored := false
	for _, w := range batch {
		err := c.writeOnce([]*Message{w.m})
		if err != nil {
			err = fmt.Errorf("enqueue %s: %w", w.m.ID, err)
		} else {
			stored = true
		}
		w.result <- err
	}
	if stored {
		c.onCommit()
	}
}

// writeOnce runs the batch writer with its own deadline and undoes the
// recipient ids it may have assigned when it fails.
func (c *committer) writeOnce(msgs []*Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	err := c.write(ctx, msgs)
	if err != nil {
		for _, m := range msgs {
			for _, r := range m.Recipients {
				r.ID = 0
			}
		}
	}
	return err
}

// failQueued answers every waiter still queued with errClosed.
func (c *committer) failQueued() {
	c.mu.Lock()
	q := c.queue
	c.queue = nil
	c.mu.Unlock()
	for _, w := range q {
		if w.state.CompareAndSwap(waitQueued, waitTaken) {
			w.result <- fmt.Errorf("enqueue %s: %w", w.m.ID, errClosed)
		}
	}
}
