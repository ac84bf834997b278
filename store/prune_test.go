package store

import (
	"errors"
	"testing"
	"time"
)

// finishAll writes one outcome per claimed recipient of message id, in
// the order of states.
func finishAll(t *testing.T, e *env, owner string, cs []*Claimed, id string, states ...string) {
	t.Helper()
	var f Finish
	i := 0
	for _, c := range cs {
		if c.MessageID != id {
			continue
		}
		if i >= len(states) {
			t.Fatalf("message %s has more claimed recipients than states %v", id, states)
		}
		o := Outcome{RecipientID: c.ID, State: states[i], Reply: "250 2.0.0 ok"}
		if states[i] == StateDeferred {
			o.NextAttempt, o.Reply = time.Now().Add(time.Hour), "451 4.3.0 later"
		}
		f.Outcomes = append(f.Outcomes, o)
		i++
	}
	if i != len(states) {
		t.Fatalf("message %s: %d claimed recipients, %d states", id, i, len(states))
	}
	n, err := e.s.Finish(ctxT(t), owner, f)
	if err != nil || n != len(states) {
		t.Fatalf("finish %s: applied %d, %v; want %d", id, n, err, len(states))
	}
}

// exists reports whether message id is still stored.
func exists(t *testing.T, e *env, id string) bool {
	t.Helper()
	_, err := e.s.GetMessage(ctxT(t), id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatalf("get message %s: %v", id, err)
	}
	return err == nil
}

func TestPruneMessages(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		done, expired, partial, queued, young := newMsg(2), newMsg(1), newMsg(2), newMsg(1), newMsg(1)
		for _, m := range []*Message{done, expired, partial} {
			mustEnqueue(t, e.s, m)
		}
		cs, err := e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 100, Lease: time.Hour})
		if err != nil || len(cs) != 5 {
			t.Fatalf("claimed %d, %v; want 5", len(cs), err)
		}
		finishAll(t, e, "w", cs, done.ID, StateDelivered, StateBounced)
		finishAll(t, e, "w", cs, expired.ID, StateExpired)
		// One recipient still deferred: never pruned, however old the other.
		finishAll(t, e, "w", cs, partial.ID, StateDelivered, StateDeferred)
		mustEnqueue(t, e.s, queued)

		// Everything above finished before cutoff; young finishes after it.
		time.Sleep(5 * time.Millisecond)
		cutoff := time.Now()
		time.Sleep(5 * time.Millisecond)
		mustEnqueue(t, e.s, young)
		cs, err = e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 100, Lease: time.Hour})
		if err != nil || len(cs) != 2 {
			t.Fatalf("claimed %d, %v; want young's and queued's recipients", len(cs), err)
		}
		finishAll(t, e, "w", cs, young.ID, StateDelivered)

		// The limit is respected: two prunable messages, one per call.
		for i := range 2 {
			n, err := e.s.PruneMessages(ctx, cutoff, 1)
			if err != nil || n != 1 {
				t.Fatalf("PruneMessages(limit 1) call %d = %d, %v; want 1", i, n, err)
			}
		}
		n, err := e.s.PruneMessages(ctx, cutoff, 1000)
		if err != nil || n != 0 {
			t.Fatalf("third PruneMessages = %d, %v; want 0", n, err)
		}
		for _, c := range []struct {
			name string
			m    *Message
			want bool
		}{
			{"delivered and bounced", done, false},
			{"expired", expired, false},
			{"one recipient deferred", partial, true},
			{"never tried", queued, true},
			{"finished after the cutoff", young, true},
		} {
			if got := exists(t, e, c.m.ID); got != c.want {
				t.Errorf("%s: stored = %v, want %v", c.name, got, c.want)
			}
		}
		// Events stay: done's two injection events.
		evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: done.ID})
		if err != nil || len(evs) != 2 {
			t.Errorf("events of a pruned message: %d, %v; want its 2 injection events kept", len(evs), err)
		}

		// A later cutoff takes young too, and only young.
		n, err = e.s.PruneMessages(ctx, time.Now().Add(time.Second), 1000)
		if err != nil || n != 1 || exists(t, e, young.ID) {
			t.Errorf("PruneMessages(now) = %d, %v; want young pruned", n, err)
		}
		// The recipients went with their messages.
		st, err := e.s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{StateDelivered: 1, StateDeferred: 1, StateQueued: 1}
		for state, w := range want {
			if st.ByState[state] != w {
				t.Errorf("after prune %s = %d, want %d (%v)", state, st.ByState[state], w, st.ByState)
			}
		}
		if st.ByState[StateBounced] != 0 || st.ByState[StateExpired] != 0 {
			t.Errorf("recipients of pruned messages left: %v", st.ByState)
		}
		if got, err := e.s.GetMessage(ctx, partial.ID); err != nil || len(got.Recipients) != 2 || len(got.Body) == 0 {
			t.Errorf("unfinished message after prune: %+v, %v", got, err)
		}
		if _, err := e.s.PruneMessages(ctx, time.Now(), 0); err == nil {
			t.Error("PruneMessages with limit 0 succeeded")
		}
	})
}

func TestReleaseLeases(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		wakeups := e.s.Wakeups()
		m1, m2 := newMsg(3), newMsg(1)
		mustEnqueue(t, e.s, m1)
		mustEnqueue(t, e.s, m2)
		a, err := e.s.ClaimDue(ctx, "A", ClaimOptions{Limit: 2, Lease: time.Hour})
		if err != nil || len(a) != 2 {
			t.Fatalf("A claimed %d, %v; want 2", len(a), err)
		}
		b, err := e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 100, Lease: time.Hour})
		if err != nil || len(b) != 2 {
			t.Fatalf("B claimed %d, %v; want 2", len(b), err)
		}
		// A delivers one of its two: that one is final and has no lease.
		if n, err := e.s.Finish(ctx, "A", Finish{Outcomes: []Outcome{{RecipientID: a[0].ID, State: StateDelivered}}}); err != nil || n != 1 {
			t.Fatalf("finish: %d, %v", n, err)
		}

		if n, err := e.s.ReleaseLeases(ctx, "nobody"); err != nil || n != 0 {
			t.Errorf("ReleaseLeases(nobody) = %d, %v; want 0", n, err)
		}
		// The PostgreSQL listener wakes once when it connects: let it.
		time.Sleep(200 * time.Millisecond)
		drain(wakeups)
		n, err := e.s.ReleaseLeases(ctx, "A")
		if err != nil || n != 1 {
			t.Fatalf("ReleaseLeases(A) = %d, %v; want 1", n, err)
		}
		waitWake(t, wakeups, "ReleaseLeases")
		c, err := e.s.ClaimDue(ctx, "C", ClaimOptions{Limit: 100, Lease: time.Hour})
		if err != nil || len(c) != 1 || c[0].ID != a[1].ID {
			t.Fatalf("C claimed %+v, %v; want A's released recipient %d only", c, err, a[1].ID)
		}
		if c[0].State != StateQueued || c[0].Attempts != 0 {
			t.Errorf("released recipient changed: %+v", c[0].Recipient)
		}
		// A's late outcome for the released recipient is ignored.
		if n, err := e.s.Finish(ctx, "A", Finish{Outcomes: []Outcome{{RecipientID: a[1].ID, State: StateDelivered}}}); err != nil || n != 0 {
			t.Errorf("finish after release applied %d, %v; want 0", n, err)
		}

		// "" releases every owner's leases: B's two and C's one.
		n, err = e.s.ReleaseLeases(ctx, "")
		if err != nil || n != 3 {
			t.Fatalf("ReleaseLeases(\"\") = %d, %v; want 3", n, err)
		}
		d, err := e.s.ClaimDue(ctx, "D", ClaimOptions{Limit: 100, Lease: time.Hour})
		if err != nil || len(d) != 3 {
			t.Errorf("D claimed %d, %v; want 3", len(d), err)
		}
		got, err := e.s.GetMessage(ctx, a[0].MessageID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range got.Recipients {
			if r.ID == a[0].ID && r.State != StateDelivered {
				t.Errorf("delivered recipient is %s after release", r.State)
			}
		}
	})
}
