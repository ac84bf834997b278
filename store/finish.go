package store

import (
	"context"
	"fmt"
	"time"
)

// Finish group commit.
//
// Every relay worker ends an attempt with one Finish. Written one per
// transaction, their commits (one fsync each on SQLite) bound relay
// throughput, so Finish goes through a committer like Enqueue: concurrent
// calls share one transaction, each still gets its own applied count, a
// recipient whose lease was lost is ignored for that call alone, and a batch
// that fails for a reason other than the database being unavailable is
// written again one call per transaction, so one bad call does not fail
// the others.

// finishOp is one Finish call on its way through the Finish committer.
type finishOp struct {
	owner string
	f     Finish    // as given; f.Enqueue prepared
	evs   []Event   // copy of f.Events, prepared
	now   time.Time // the call's time: updated_at, and NextAttempt when none is given

	// Set by the batch writer.
	applied int  // outcomes applied (recipients still leased to owner)
	wrote   bool // f.Enqueue was written
}

// newFinishOp validates f and prepares its messages and events as Finish
// documents.
func newFinishOp(owner string, f Finish, now time.Time) (*finishOp, error) {
	now = utc(now)
	for _, o := range f.Outcomes {
		if !validOutcomeState(o.State) {
			return nil, fmt.Errorf("finish: recipient %d: bad state %q", o.RecipientID, o.State)
		}
	}
	for _, m := range f.Enqueue {
		if err := prepareMessage(m, now); err != nil {
			return nil, fmt.Errorf("finish: %w", err)
		}
	}
	evs := append([]Event(nil), f.Events...)
	prepareEvents(evs, now)
	if err := prepareDetails(evs); err != nil {
		return nil, fmt.Errorf("finish: %w", err)
	}
	return &finishOp{owner: owner, f: f, evs: evs, now: now}, nil
}

// writesMessages reports whether op's new messages are to be written: only
// when some outcome was applied (a worker that lost every lease must not
// send the DSN the new owner will send), or when there were no outcomes.
func (op *finishOp) writesMessages() bool {
	return op.applied > 0 || len(op.f.Outcomes) == 0
}

// outcomeNext returns the next_attempt to store for o: its NextAttempt (or
// now) for states that are retried, and whether to store it at all.
func (op *finishOp) outcomeNext(o Outcome) (time.Time, bool) {
	next := o.NextAttempt
	if next.IsZero() {
		next = op.now
	}
	return utc(next), o.State == StateDeferred || o.State == StateQueued
}

// finishSpec is the commitSpec of Finish's items: commits that stored new
// messages wake relay workers through wakeCh, and the results go to h.
func finishSpec(write func(context.Context, []*finishOp, func() []*finishOp) error, wakeCh chan struct{}, h *health) commitSpec[*finishOp] {
	return commitSpec[*finishOp]{
		write:  write,
		health: h,
		size: func(op *finishOp) int {
			n := 128*len(op.f.Outcomes) + 256*len(op.evs)
			for _, m := range op.f.Enqueue {
				n += messageSize(m)
			}
			return n
		},
		label: func(*finishOp) string { return "finish" },
		undo: func(op *finishOp) {
			op.applied, op.wrote = 0, false
			undoRecipientIDs(op.f.Enqueue)
		},
		onCommit: func(ops []*finishOp) {
			for _, op := range ops {
				if op.wrote {
					wake(wakeCh)
					return
				}
			}
		},
	}
}
