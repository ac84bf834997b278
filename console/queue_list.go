package console

import (
	"net/http"
	"slices"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// queueShown is how many messages each list of the queue page shows.
const queueShown = 25

// queueData is the queue page's data.
type queueData struct {
	// Stats are the recipient counts per state, every account's (shown to
	// master-account admins only: Stats has no per-account form).
	Stats  *store.QueueStats
	States []string
	// Deferred are the newest messages with a deferred recipient; Oldest
	// the oldest with a recipient still waiting (queued or deferred).
	Deferred, Oldest []*store.Message
	Now              time.Time
}

// queueList shows the queue: counts, deferred and oldest messages.
func (s *Server) queueList(w http.ResponseWriter, r *http.Request, se *session) error {
	ctx := r.Context()
	d := queueData{States: []string{store.StateQueued, store.StateDeferred, store.StateDelivered,
		store.StateBounced, store.StateExpired}, Now: time.Now()}
	if se.id.Subaccount == 0 {
		st, err := s.st.Stats(ctx)
		if err != nil {
			return err
		}
		d.Stats = &st
	}
	var err error
	d.Deferred, err = s.st.ListMessages(ctx, store.QueueFilter{State: store.StateDeferred, Subaccount: se.scope(), Limit: queueShown})
	if err != nil {
		return err
	}
	for _, state := range []string{store.StateQueued, store.StateDeferred} {
		ms, err := s.st.ListMessages(ctx, store.QueueFilter{State: state, Subaccount: se.scope(),
			Limit: queueShown, OldestFirst: true})
		if err != nil {
			return err
		}
		for _, m := range ms {
			if !slices.ContainsFunc(d.Oldest, func(o *store.Message) bool { return o.ID == m.ID }) {
				d.Oldest = append(d.Oldest, m)
			}
		}
	}
	slices.SortFunc(d.Oldest, func(a, b *store.Message) int { return a.CreatedAt.Compare(b.CreatedAt) })
	d.Oldest = d.Oldest[:min(len(d.Oldest), queueShown)]
	s.render(w, r, se, http.StatusOK, "queue", &view{Title: "Queue", Nav: "queue", D: d})
	return nil
}
