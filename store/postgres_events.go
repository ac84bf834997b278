package store

import (
	"context"
	"strconv"
	"time"
)

// SearchEvents implements Store.
func (s *pgStore) SearchEvents(ctx context.Context, q EventSearch) (EventPage, error) {
	ph := func(n int) string { return "$" + strconv.Itoa(n) }
	tm := func(t time.Time) any { return utc(t) }
	limit := limitOr(q.Limit, 1000)
	where, args := eventWhere(q, ph, tm, true)
	evs, err := s.queryEvents(ctx, "search events",
		`SELECT `+pgEventCols+` FROM events`+where+` ORDER BY time DESC, id DESC LIMIT `+ph(len(args)+1),
		append(args, limit+1)...)
	if err != nil {
		return EventPage{}, err
	}
	var p EventPage
	p.Events, p.Next = pageOf(evs, limit)
	if q.Count {
		where, args := eventWhere(q, ph, tm, false)
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM events`+where, args...).Scan(&p.Total); err != nil {
			return EventPage{}, pgErr("count events", err)
		}
	}
	return p, nil
}
