package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// finishCall is one Finish of TestFinishConcurrent and what it should do.
type finishCall struct {
	msg     *Message
	stolen  bool     // its first recipient's lease went to another owner
	dsn     *Message // a new message it enqueues, or nil
	bad     bool     // its new message reuses an existing id: the call fails
	applied int
	err     error
}

// TestFinishConcurrent runs Finish from many goroutines at once, as relay
// workers do (they share transactions): each caller gets its own applied
// count, lost leases are ignored for that caller only, and a caller whose
// write fails does not fail the others and stores nothing.
func TestFinishConcurrent(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		const n = 24
		calls := make([]*finishCall, n)
		for i := range calls {
			c := &finishCall{msg: newMsg(2), stolen: i%4 == 0, bad: i == 5}
			mustEnqueue(t, e.s, c.msg)
			if i%6 == 1 || c.bad {
				c.dsn = newMsg(1)
				c.dsn.KeyID, c.dsn.MailFrom, c.dsn.MsysAPI = "", "", nil
			}
			calls[i] = c
		}
		calls[5].dsn.ID = calls[0].msg.ID
		cs, err := e.s.ClaimDue(ctx, "w1", ClaimOptions{Limit: 100, Lease: time.Minute})
		if err != nil || len(cs) != 2*n {
			t.Fatalf("claimed %d, %v", len(cs), err)
		}
		claimed := map[int64]bool{}
		for _, c := range cs {
			claimed[c.ID] = true
		}
		for _, c := range calls {
			if c.stolen {
				steal(t, e, c.msg.Recipients[0].ID)
			}
		}

		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, c := range calls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var f Finish
				for _, r := range c.msg.Recipients {
					if !claimed[r.ID] {
						c.err = fmt.Errorf("recipient %d was not claimed", r.ID)
						return
					}
					f.Outcomes = append(f.Outcomes, Outcome{RecipientID: r.ID, State: StateDelivered, Reply: "250 ok " + r.Address})
					f.Events = append(f.Events, Event{Type: EventDelivery, MessageID: c.msg.ID, Recipient: r.Address, Reply: "250 ok"})
				}
				if c.dsn != nil {
					f.Enqueue = []*Message{c.dsn}
				}
				<-start
				c.applied, c.err = e.s.Finish(ctx, "w1", f)
			}()
		}
		close(start)
		wg.Wait()

		for i, c := range calls {
			want := 2
			if c.stolen {
				want = 1
			}
			if c.bad {
				if !errors.Is(c.err, ErrExists) || c.applied != 0 {
					t.Errorf("call %d (duplicate new message): %d, %v; want 0 and ErrExists", i, c.applied, c.err)
				}
				want = 0
			} else if c.err != nil || c.applied != want {
				t.Errorf("call %d: applied %d, %v; want %d", i, c.applied, c.err, want)
			}

			m, err := e.s.GetMessage(ctx, c.msg.ID)
			if err != nil {
				t.Fatalf("get %s: %v", c.msg.ID, err)
			}
			for j, r := range m.Recipients {
				wantState, wantAttempts := StateDelivered, 1
				if c.bad || (c.stolen && j == 0) {
					wantState, wantAttempts = StateQueued, 0
				}
				if r.State != wantState || r.Attempts != wantAttempts {
					t.Errorf("call %d, %s: %s after %d attempts, want %s after %d", i, r.Address, r.State, r.Attempts, wantState, wantAttempts)
				}
			}
			evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: c.msg.ID, Types: []string{EventDelivery}})
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != want {
				t.Errorf("call %d: %d delivery events, want %d", i, len(evs), want)
			}
			for _, ev := range evs {
				if c.stolen && ev.Recipient == c.msg.Recipients[0].Address {
					t.Errorf("call %d: event for the stolen recipient %s was stored", i, ev.Recipient)
				}
			}
			if c.dsn != nil && !c.bad {
				if _, err := e.s.GetMessage(ctx, c.dsn.ID); err != nil {
					t.Errorf("call %d: new message %s: %v", i, c.dsn.ID, err)
				}
			}
		}
		// The failed call's new message did not replace the one it clashed with.
		m, err := e.s.GetMessage(ctx, calls[0].msg.ID)
		if err != nil || m.MailFrom != calls[0].msg.MailFrom {
			t.Errorf("message %s after the clash: %+v, %v", calls[0].msg.ID, m, err)
		}
	})
}

// claimN enqueues n one-recipient messages and claims them for "w1".
func claimN(t *testing.T, s Store, n int) []*Claimed {
	t.Helper()
	for range n {
		mustEnqueue(t, s, newMsg(1))
	}
	cs, err := s.ClaimDue(ctxT(t), "w1", ClaimOptions{Limit: n, Lease: time.Minute})
	if err != nil || len(cs) != n {
		t.Fatalf("claimed %d, %v", len(cs), err)
	}
	return cs
}

// finishDelivered is a Finish delivering c, with new messages.
func finishDelivered(c *Claimed, enqueue ...*Message) Finish {
	return Finish{
		Outcomes: []Outcome{{RecipientID: c.ID, State: StateDelivered, Reply: "250 ok"}},
		Events:   []Event{{Type: EventDelivery, MessageID: c.MessageID, Recipient: c.Address}},
		Enqueue:  enqueue,
	}
}

// finishResult is what one Finish call returned.
type finishResult struct {
	i, n int
	err  error
}

// TestFinishGroupCommit pins the SQLite committer mid-batch so that five
// Finish calls queue up, and checks they are written in one transaction
// (with the call the writer held);
// then does the same with one bad call among them, which must fail alone
// after the batch is written again one call per transaction.
func TestFinishGroupCommit(t *testing.T) {
	t.Parallel()
	for _, withBad := range []bool{false, true} {
		t.Run(fmt.Sprintf("bad=%v", withBad), func(t *testing.T) {
			t.Parallel()
			s := openEnv(t, "sqlite").s.(*sqliteStore)
			cs := claimN(t, s, 6)
			// Enqueue and Finish share SQLite's committer: count from here.
			s.wc.mu.Lock()
			taken0, writes0 := s.wc.taken, s.wc.writes
			s.wc.mu.Unlock()
			s.wc.spec.linger = 0 // the first call goes to the held writer at once
			tx := holdWriter(t, s)
			results := make(chan finishResult, len(cs))
			call := func(i int, f Finish) {
				n, err := s.Finish(context.Background(), "w1", f)
				results <- finishResult{i, n, err}
			}
			go call(0, finishDelivered(cs[0]))
			awaitTaken(t, s.wc, taken0+1, 0)
			for i := 1; i < len(cs); i++ {
				f := finishDelivered(cs[i])
				if withBad && i == 3 {
					dup := newMsg(1)
					dup.ID = cs[0].MessageID
					f.Enqueue = []*Message{dup}
				}
				go call(i, f)
			}
			awaitTaken(t, s.wc, taken0+1, len(cs)-1)
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			for range cs {
				r := <-results
				if withBad && r.i == 3 {
					if !errors.Is(r.err, ErrExists) || r.n != 0 {
						t.Errorf("bad call: %d, %v; want 0 and ErrExists", r.n, r.err)
					}
					continue
				}
				if r.err != nil || r.n != 1 {
					t.Errorf("call %d: %d, %v; want 1", r.i, r.n, r.err)
				}
			}
			s.wc.mu.Lock()
			writes := s.wc.writes - writes0
			s.wc.mu.Unlock()
			// The first call, and the five queued behind it, which join its
			// transaction before the COMMIT; with a bad one, that transaction
			// fails and its six calls are written singly.
			want := int64(1)
			if withBad {
				want = 1 + 6
			}
			if writes != want {
				t.Errorf("%d transactions, want %d", writes, want)
			}
			st, err := s.Stats(context.Background())
			wantDelivered := int64(len(cs))
			if withBad {
				wantDelivered--
			}
			if err != nil || st.ByState[StateDelivered] != wantDelivered {
				t.Errorf("stats %v, %v; want %d delivered", st.ByState, err, wantDelivered)
			}
		})
	}
}

// TestFinishLingersForMessages: on SQLite a batch of outcomes alone waits
// (outcomeLinger) for a message to share its transaction, and the message
// ends the wait: one commit for both.
func TestFinishLingersForMessages(t *testing.T) {
	t.Parallel()
	s := openEnv(t, "sqlite").s.(*sqliteStore)
	cs := claimN(t, s, 1)
	s.wc.mu.Lock()
	taken0, writes0 := s.wc.taken, s.wc.writes
	s.wc.mu.Unlock()
	s.wc.spec.linger = time.Hour // only the message may end the wait

	done := make(chan error, 1)
	go func() {
		_, err := s.Finish(context.Background(), "w1", finishDelivered(cs[0]))
		done <- err
	}()
	awaitTaken(t, s.wc, taken0+1, 0)
	select {
	case err := <-done:
		t.Fatalf("outcome answered (%v) while lingering", err)
	case <-time.After(50 * time.Millisecond):
	}
	mustEnqueue(t, s, newMsg(1))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s.wc.mu.Lock()
	writes := s.wc.writes - writes0
	s.wc.mu.Unlock()
	if writes != 1 {
		t.Errorf("%d transactions for an outcome and a message, want 1", writes)
	}
}

// TestFinishNoLingerWhenDraining: when no message arrived for the linger
// time (a queue draining after a burst), outcomes do not wait.
func TestFinishNoLingerWhenDraining(t *testing.T) {
	t.Parallel()
	s := openEnv(t, "sqlite").s.(*sqliteStore)
	cs := claimN(t, s, 1)
	s.wc.spec.linger = time.Hour
	s.wc.lastOther.Store(time.Now().Add(-2 * time.Hour).UnixNano())
	done := make(chan error, 1)
	go func() {
		_, err := s.Finish(context.Background(), "w1", finishDelivered(cs[0]))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an outcome waited for messages although none came for longer than the linger time")
	}
}
