package webhooks

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

const (
	// pruneEvery and keepFinished: delivered and failed batches, and
	// attempts, are kept this long for batch-status.
	pruneEvery   = time.Hour
	keepFinished = 24 * time.Hour
	// holdWarnAfter is how long committed events may wait for an open
	// transaction (store.WebhookStore.WebhookHold) before the service
	// warns, and how often it warns again while they wait.
	holdWarnAfter = time.Minute
)

// Service runs the dispatcher (events to batches) and the workers (batches
// to targets). Several nodes may run one on a shared PostgreSQL store.
type Service struct {
	cfg    Config
	st     store.Store
	sender *Sender
	owner  string // lease owner: node and a random suffix, new per process

	wake chan struct{} // a batch was made: workers look now

	hold holdWatch // dispatch loop only

	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
	stopped bool
}

// NewService returns a service; Start runs it.
func NewService(cfg Config, st store.Store) *Service {
	cfg.defaults()
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
	}
	return &Service{cfg: cfg, st: st, sender: NewSender(cfg), owner: cfg.Node + "/" + newID()[:8],
		wake: make(chan struct{}, 1), hold: holdWatch{warnAfter: holdWarnAfter}}
}

// Start runs the service until ctx ends or Stop is called.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		return errors.New("webhooks: already started")
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.dispatchLoop(ctx) }()
	go func() { defer wg.Done(); s.deliverLoop(ctx) }()
	go func() { wg.Wait(); close(s.done) }()
	return nil
}

// Stop ends the loops and waits for POSTs in flight (at most Timeout). A
// batch being sent keeps its lease: another node (or the next start)
// sends it when the lease ends. Safe to call twice.
func (s *Service) Stop() {
	s.mu.Lock()
	if s.done == nil || s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	s.cancel()
	done := s.done
	s.mu.Unlock()
	<-done
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-wake:
	}
	return true
}

// dispatchLoop turns new events into batches every BatchInterval, and
// prunes old batches every hour.
func (s *Service) dispatchLoop(ctx context.Context) {
	lastPrune := time.Time{}
	for {
		if time.Since(lastPrune) > pruneEvery {
			lastPrune = time.Now()
			if n, err := s.st.PruneWebhookBatches(ctx, time.Now().Add(-keepFinished)); err != nil && ctx.Err() == nil {
				s.cfg.Logger.Warn("prune webhook batches", "err", err)
			} else if n > 0 {
				s.cfg.Logger.Info("pruned webhook batches", "count", n)
			}
		}
		s.dispatchAll(ctx)
		if !sleep(ctx, s.cfg.BatchInterval, nil) {
			return
		}
	}
}

// dispatchAll dispatches every webhook until its backlog is below one
// batch.
func (s *Service) dispatchAll(ctx context.Context) {
	ws, err := s.st.ListWebhooks(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("list webhooks", "err", err)
		}
		return
	}
	active := false
	for _, w := range ws {
		active = active || w.Active
		for ctx.Err() == nil {
			made := false
			n, err := s.st.DispatchWebhook(ctx, w.ID, s.cfg.BatchSize, func(evs []store.Event) (*store.WebhookBatch, error) {
				if !w.Active {
					return nil, nil // an inactive webhook skips the events of its time
				}
				body, count, err := Render(w, evs)
				if err != nil || body == nil {
					return nil, err
				}
				made = true
				return &store.WebhookBatch{ID: newID(), Body: body, Events: count}, nil
			})
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, store.ErrNotFound) {
					s.cfg.Logger.Warn("dispatch webhook", "webhook", w.ID, "err", err)
				}
				break
			}
			if made {
				select {
				case s.wake <- struct{}{}:
				default:
				}
			}
			if n < s.cfg.BatchSize {
				break
			}
		}
	}
	if active {
		s.watchHold(ctx)
	}
}

// holdWatch follows the transaction that holds committed events back from
// dispatch (PostgreSQL: one left open anywhere on the server), to warn when
// it lasts.
type holdWatch struct {
	warnAfter time.Duration
	xid       uint64    // the holding transaction, 0 if none
	since     time.Time // when it was first seen holding
	warned    time.Time // last warning about it
}

// watchHold asks the store what holds dispatch back and warns once that
// has lasted warnAfter, then every warnAfter, naming the transaction; once
// it ends after a warning, it says so.
func (s *Service) watchHold(ctx context.Context) {
	h, err := s.st.WebhookHold(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Warn("check what holds webhook events back", "err", err)
		}
		return
	}
	w, now := &s.hold, time.Now()
	if h == nil || h.XID != w.xid {
		if !w.warned.IsZero() {
			s.cfg.Logger.Info("webhook events no longer held back", "xid", w.xid, "held_for", now.Sub(w.since).Round(time.Second).String())
		}
		*w = holdWatch{warnAfter: w.warnAfter}
		if h == nil {
			return
		}
		w.xid, w.since = h.XID, now
	}
	if now.Sub(w.since) < w.warnAfter || now.Sub(w.warned) < w.warnAfter {
		return
	}
	w.warned = now
	attrs := []any{"xid", h.XID, "held_for", now.Sub(w.since).Round(time.Second).String()}
	if h.PID != 0 {
		attrs = append(attrs, "pid", h.PID, "database", h.Database, "user", h.User, "application", h.Application,
			"state", h.State, "transaction_started", h.Since.Format(time.RFC3339))
	} else {
		attrs = append(attrs, "session", "not visible to this database user (pg_read_all_stats shows it)")
	}
	s.cfg.Logger.Warn("webhook events held back by a transaction open on the database server; "+
		"they are sent once it ends (end it, or set idle_in_transaction_session_timeout)", attrs...)
}

// deliverLoop claims due batches and POSTs them, Workers at a time.
func (s *Service) deliverLoop(ctx context.Context) {
	sem := make(chan struct{}, s.cfg.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	lease := s.cfg.Timeout*3 + 10*time.Second
	for {
		free := s.cfg.Workers - len(sem)
		var bs []*store.WebhookBatch
		if free > 0 {
			var err error
			bs, err = s.st.ClaimWebhookBatches(ctx, s.owner, free, lease)
			if err != nil && ctx.Err() == nil {
				s.cfg.Logger.Warn("claim webhook batches", "err", err)
			}
		}
		for _, b := range bs {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() {
					<-sem
					wg.Done()
					select { // a worker is free: claim more now
					case s.wake <- struct{}{}:
					default:
					}
				}()
				s.deliver(ctx, b)
			}()
		}
		if len(bs) == free && free > 0 {
			continue // more may be due
		}
		if !sleep(ctx, min(s.cfg.BatchInterval, time.Second), s.wake) {
			return
		}
	}
}

// deliver POSTs one claimed batch and records the attempt.
func (s *Service) deliver(ctx context.Context, b *store.WebhookBatch) {
	w, err := s.st.GetWebhook(ctx, b.WebhookID)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			s.cfg.Logger.Warn("webhook of batch", "batch", b.ID, "err", err)
		}
		return // deleted: the batch went with it; else the lease ends and it is retried
	}
	// The POST is not cut short by Stop: its own timeout bounds it, and a
	// batch abandoned mid-POST would be sent twice.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
	res := s.sender.Post(pctx, w, b.ID, b.Body)
	cancel()
	now := time.Now()
	r := store.BatchResult{State: store.BatchDelivered, Attempt: store.WebhookAttempt{
		WebhookID: w.ID, Time: now, Attempt: b.Attempts + 1, ResponseCode: res.Status, Node: s.cfg.Node}}
	if !res.OK() {
		r.Attempt.Failure = res.Summary()
		next := now.Add(s.backoff(b.Attempts + 1))
		if next.Sub(b.CreatedAt) > s.cfg.MaxAge {
			r.State = store.BatchFailed
			s.cfg.Logger.Warn("webhook batch given up", "webhook", w.ID, "batch", b.ID, "events", b.Events,
				"attempts", b.Attempts+1, "last", r.Attempt.Failure)
		} else {
			r.State, r.NextAttempt = store.BatchPending, next
			s.cfg.Logger.Info("webhook batch failed, will retry", "webhook", w.ID, "batch", b.ID,
				"attempt", b.Attempts+1, "result", r.Attempt.Failure, "retry_in", next.Sub(now).Round(time.Millisecond).String())
		}
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if ok, err := s.st.FinishWebhookBatch(fctx, s.owner, b.ID, r); err != nil {
		s.cfg.Logger.Warn("record webhook attempt", "batch", b.ID, "err", err)
	} else if !ok {
		s.cfg.Logger.Warn("webhook batch lease lost during the POST; it may be sent again", "batch", b.ID)
	}
}

// backoff is the wait before retry number n (1 = first retry): RetryInitial
// doubled per attempt, capped at RetryMax, with ±10% jitter.
func (s *Service) backoff(n int) time.Duration {
	d := s.cfg.RetryInitial
	for i := 1; i < n && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}
