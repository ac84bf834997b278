package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/events"
	"github.com/smtpgw/smtpgw/store"
)

const eventsUsage = `usage:
  smtpgw events [--message ID] [--recipient ADDR] [--campaign ID] [--key ID] [--subaccount N] [--type T]
                [--since DURATION] [--until DURATION] [--limit N] [--cursor C] [--json]`

var eventTypes = events.Recorded

func cmdEvents(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("events")
	asJSON := fs.Bool("json", false, "print JSON")
	var msgIDs, rcpts, campaigns, types stringList
	fs.Var(&msgIDs, "message", "only events of this message id, repeatable")
	fs.Var(&rcpts, "recipient", "only events of this recipient address, repeatable")
	fs.Var(&campaigns, "campaign", "only events of this campaign id, repeatable")
	keyID := fs.String("key", "", "only events of this API key id")
	var subaccount subaccountFlag
	fs.Var(&subaccount, "subaccount", "only events of this subaccount (0: master account; default: all)")
	fs.Var(&types, "type", "only these event types, repeatable ("+strings.Join(eventTypes, ", ")+")")
	since := fs.Duration("since", 0, "only events newer than this, e.g. 1h or 30m (default: all)")
	until := fs.Duration("until", 0, "only events older than this, e.g. 10m")
	limit := fs.Int("limit", 100, "at most this many events (one page)")
	cursor := fs.String("cursor", "", "continue after the page that printed this cursor")
	pos, err := parse(fs, eventsUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("events: unexpected argument %q\n%s", pos[0], eventsUsage)
	}
	for _, t := range types {
		if !slices.Contains(eventTypes, t) {
			return usagef("events: unknown --type %q (known: %s)", t, strings.Join(eventTypes, ", "))
		}
	}
	if *limit < 1 || *limit > events.MaxPerPage {
		return usagef("events: --limit must be from 1 to %d, not %d", events.MaxPerPage, *limit)
	}
	q := store.EventSearch{MessageIDs: msgIDs, Recipients: rcpts, CampaignIDs: campaigns, KeyID: *keyID,
		Types: types, Limit: *limit}
	if *cursor != "" {
		c, err := store.ParseEventCursor(*cursor)
		if err != nil {
			return usagef("events: --cursor: %v", err)
		}
		q.After = &c
	}
	if subaccount.set {
		q.Subaccounts = []int64{subaccount.n}
	}
	now := time.Now()
	if *since > 0 {
		q.From = now.Add(-*since)
	}
	if *until > 0 {
		q.To = now.Add(-*until)
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	page, err := st.SearchEvents(ctx, q)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	evs := page.Events
	if *asJSON {
		out := make([]api.Event, 0, len(evs))
		for _, ev := range evs {
			out = append(out, api.NewEvent(ev))
		}
		res := map[string]any{"results": out}
		if page.Next != nil {
			res["next_cursor"] = page.Next.String()
		}
		return writeJSON(e.stdout, res)
	}
	if len(evs) == 0 {
		fmt.Fprintln(e.stdout, "No events match.")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTYPE\tMESSAGE\tRECIPIENT\tKEY\tSUBACCOUNT\tCAMPAIGN\tCLASS\tREPLY")
	for _, ev := range evs {
		class := "-"
		if ev.Detail.BounceClass != 0 {
			class = strconv.Itoa(ev.Detail.BounceClass)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.Time.UTC().Format(time.RFC3339), ev.Type,
			termSafe(ev.MessageID), termSafe(dash(ev.Recipient)), dash(ev.KeyID), subaccountText(ev.Subaccount),
			termSafe(dash(ev.CampaignID)), class, termSafe(dash(ev.Reply)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if page.Next != nil {
		fmt.Fprintf(e.stdout, "More events: add --cursor %s\n", page.Next)
	}
	return nil
}
