package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/webhooks"
)

const webhooksUsage = `usage:
  smtpgw webhooks list [--json]
  smtpgw webhooks show ID [--attempts N] [--json]
  smtpgw webhooks delete ID`

// cmdWebhooks lists, shows and deletes event webhooks. They are created
// and changed with the HTTP API (POST/PUT /api/v1/webhooks), which tests
// the target first.
func cmdWebhooks(ctx context.Context, args []string, e env) (err error) {
	if len(args) == 0 {
		return usagef("webhooks: missing subcommand\n%s", webhooksUsage)
	}
	sub, rest := args[0], args[1:]
	fs, cfgPath := newFlags("webhooks " + sub)
	asJSON := fs.Bool("json", false, "print JSON")
	var attempts *int
	switch sub {
	case "list", "delete":
	case "show":
		attempts = fs.Int("attempts", 10, "show this many of the latest delivery attempts")
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, webhooksUsage)
		return nil
	default:
		return usagef("webhooks: unknown subcommand %q\n%s", sub, webhooksUsage)
	}
	pos, err := parse(fs, webhooksUsage, rest, e)
	if err != nil {
		return err
	}
	if err := listOrOne(pos, "webhooks", sub, "one webhook id (smtpgw webhooks list shows them)", webhooksUsage); err != nil {
		return err
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	notFound := func(err error) error {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("webhooks %s: no webhook %q (smtpgw webhooks list shows them)", sub, pos[0])
		}
		return fmt.Errorf("webhooks %s: %w", sub, err)
	}
	switch sub {
	case "list":
		ws, err := st.ListWebhooks(ctx)
		if err != nil {
			return fmt.Errorf("webhooks list: %w", err)
		}
		if *asJSON {
			out := make([]api.Webhook, 0, len(ws))
			for _, w := range ws {
				out = append(out, api.NewWebhook(w))
			}
			return writeJSON(e.stdout, map[string]any{"results": out})
		}
		if len(ws) == 0 {
			fmt.Fprintln(e.stdout, "No webhooks (create them with POST /api/v1/webhooks).")
			return nil
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tTARGET\tEVENTS\tACTIVE\tAUTH\tSUBACCOUNT")
		for _, w := range ws {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\t%s\n", w.ID, termSafe(w.Name), termSafe(w.Target),
				eventList(w.Events), w.Active, w.AuthType, webhookScope(w.Subaccount))
		}
		return tw.Flush()
	case "show":
		w, err := st.GetWebhook(ctx, pos[0])
		if err != nil {
			return notFound(err)
		}
		at, err := st.WebhookAttempts(ctx, w.ID, *attempts)
		if err != nil {
			return fmt.Errorf("webhooks show: %w", err)
		}
		if *asJSON {
			return writeJSON(e.stdout, map[string]any{"results": api.NewWebhook(w), "attempts": at})
		}
		fmt.Fprintf(e.stdout, "ID:          %s\nName:        %s\nTarget:      %s\nEvents:      %s\nActive:      %t\n"+
			"Auth:        %s\nSubaccount:  %s\nCreated:     %s\n", w.ID, termSafe(w.Name), termSafe(w.Target),
			eventList(w.Events), w.Active, w.AuthType, webhookScope(w.Subaccount), w.CreatedAt.Format(time.RFC3339))
		if len(at) == 0 {
			fmt.Fprintln(e.stdout, "No delivery attempts yet.")
			return nil
		}
		fmt.Fprintln(e.stdout, "\nLatest attempts:")
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tBATCH\tATTEMPT\tRESULT\tNODE")
		for _, a := range at {
			res := strconv.Itoa(a.ResponseCode)
			if a.Failure != "" {
				res = a.Failure
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", a.Time.Format(time.RFC3339), a.BatchID, a.Attempt, termSafe(res), termSafe(a.Node))
		}
		return tw.Flush()
	case "delete":
		if err := webhooks.NewManager(webhooks.Config{}, st).Delete(ctx, pos[0]); err != nil {
			return notFound(err)
		}
		fmt.Fprintf(e.stdout, "Deleted webhook %s and its undelivered batches.\n", pos[0])
	}
	return nil
}

func eventList(evs []string) string {
	if len(evs) == 0 {
		return "all"
	}
	return strings.Join(evs, ",")
}

func webhookScope(sub *int64) string {
	if sub == nil {
		return "all"
	}
	return subaccountText(*sub)
}
