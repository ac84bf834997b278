package store

import (
	"context"
	"time"
)

// SearchEvents implements Store.
func (s *sqliteStore) SearchEvents(ctx context.Context, q EventSearch) (EventPage, error) {
	ph := func(int) string { return "?" }
	tm := func(t time.Time) any { return us(t) }
	limit := limitOr(q.Limit, 1000)
	where, args := eventWhere(q, ph, tm, true)
	evs, err := s.queryEvents(ctx, "search events",
		`SELECT `+sqliteEventCols+` FROM events`+where+` ORDER BY time DESC, id DESC LIMIT ?`,
		append(args, limit+1)...)
	if err != nil {
		return EventPage{}, err
	}
	var p EventPage
	p.Events, p.Next = pageOf(evs, limit)
	if q.Count {
		where, args := eventWhere(q, ph, tm, false)
		if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM events`+where, args...).Scan(&p.Total); err != nil {
			return EventPage{}, sqliteErr("count events", err)
		}
	}
	return p, nil
}

// pageOf cuts a listing fetched with limit+1 rows to limit and returns the
// cursor of the next page, nil if the extra row did not come.
func pageOf(evs []Event, limit int) ([]Event, *EventCursor) {
	if len(evs) <= limit {
		return evs, nil
	}
	evs = evs[:limit]
	last := evs[len(evs)-1]
	return evs, &EventCursor{Time: last.Time, ID: last.ID}
}
