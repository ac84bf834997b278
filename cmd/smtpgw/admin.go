package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/config"
	"github.com/smtpgw/smtpgw/relay"
	"github.com/smtpgw/smtpgw/store"
)

func cmdMigrate(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("migrate")
	pos, err := parse(fs, "usage: smtpgw migrate [--config FILE]", args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("migrate: unexpected argument %q", pos[0])
	}
	cfg, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	where := "SQLite in " + cfg.DataDir
	if cfg.Database.URL != "" {
		where = "PostgreSQL"
	}
	fmt.Fprintf(e.stdout, "Database schema is up to date (%s).\n", where)
	return nil
}

const domainsUsage = `usage:
  smtpgw domains add DOMAIN [--subaccount N] [--shared] [--algorithm rsa|ed25519] [--selector S]
  smtpgw domains list [--json]
  smtpgw domains show DOMAIN [--json]
  smtpgw domains delete DOMAIN`

func cmdDomains(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		return usagef("domains: missing subcommand\n%s", domainsUsage)
	}
	sub, rest := args[0], args[1:]
	fs, cfgPath := newFlags("domains " + sub)
	asJSON := fs.Bool("json", false, "print JSON")
	var subaccount *int64
	var shared *bool
	var algorithm, selector *string
	switch sub {
	case "add":
		subaccount = fs.Int64("subaccount", 0, "subaccount that owns the domain (default: master account)")
		shared = fs.Bool("shared", false, "let every subaccount send from this domain")
		algorithm = fs.String("algorithm", "rsa", "DKIM key algorithm: rsa (2048 bits) or ed25519")
		selector = fs.String("selector", "", "DKIM selector (default: relay.dkim_selector)")
	case "list", "show", "delete":
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, domainsUsage)
		return nil
	default:
		return usagef("domains: unknown subcommand %q\n%s", sub, domainsUsage)
	}
	pos, err := parse(fs, domainsUsage, rest, e)
	if err != nil {
		return err
	}
	if err := listOrOne(pos, "domains", sub, "one domain", domainsUsage); err != nil {
		return err
	}
	cfg, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	switch sub {
	case "add":
		name, err := api.NormalizeDomain(pos[0])
		if err != nil {
			return usagef("domains add: %v", err)
		}
		sel := *selector
		if sel == "" {
			sel = cfg.Relay.DKIMSelector
		}
		if *algorithm != "rsa" && *algorithm != "ed25519" {
			return usagef("domains add: --algorithm must be rsa or ed25519, not %q", *algorithm)
		}
		priv, pub, err := relay.GenerateDKIMKey(*algorithm)
		if err != nil {
			return fmt.Errorf("domains add: generate DKIM key: %w", err)
		}
		d := &store.Domain{Name: name, Subaccount: *subaccount, Shared: *shared, Selector: sel,
			Algorithm: *algorithm, PrivateKey: priv, PublicKey: pub}
		if err := st.CreateDomain(ctx, d); err != nil {
			if errors.Is(err, store.ErrExists) {
				return fmt.Errorf("domains add: %s is already a sending domain (see \"smtpgw domains show %s\")", name, name)
			}
			return fmt.Errorf("domains add: %w", err)
		}
		rname, rvalue := relay.DKIMRecord(d)
		if *asJSON {
			return writeJSON(e.stdout, map[string]any{"results": api.NewDomain(d)})
		}
		fmt.Fprintf(e.stdout, "Added sending domain %s. Publish this DNS TXT record so receivers can verify DKIM:\n\n", name)
		fmt.Fprintf(e.stdout, "%s. IN TXT %s\n\n", rname, quoteTXT(rvalue))
		fmt.Fprintln(e.stdout, "Mail whose From: is at this domain is now DKIM-signed at relay; submissions from")
		fmt.Fprintln(e.stdout, "domains that are not sending domains are refused while any sending domain exists.")
		return nil
	case "list":
		ds, err := st.ListDomains(ctx)
		if err != nil {
			return fmt.Errorf("domains list: %w", err)
		}
		if *asJSON {
			out := make([]api.Domain, 0, len(ds))
			for _, d := range ds {
				out = append(out, api.NewDomain(d))
			}
			return writeJSON(e.stdout, map[string]any{"results": out})
		}
		if len(ds) == 0 {
			fmt.Fprintln(e.stdout, "No sending domains: mail from any From: domain is accepted and relayed unsigned.")
			fmt.Fprintln(e.stdout, "Add one with: smtpgw domains add example.com")
			return nil
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DOMAIN\tSUBACCOUNT\tSHARED\tSELECTOR\tALGORITHM\tCREATED")
		for _, d := range ds {
			fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\t%s\n", termSafe(d.Name), subaccountText(d.Subaccount), d.Shared,
				termSafe(d.Selector), d.Algorithm, d.CreatedAt.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	case "show":
		d, err := st.GetDomain(ctx, strings.ToLower(pos[0]))
		if err != nil {
			return fmt.Errorf("domains show: %w", notFound(err, "sending domain", pos[0], "smtpgw domains list"))
		}
		if *asJSON {
			return writeJSON(e.stdout, map[string]any{"results": api.NewDomain(d)})
		}
		rname, rvalue := relay.DKIMRecord(d)
		fmt.Fprintf(e.stdout, "domain:      %s\nsubaccount:  %s\nshared:      %t\nselector:    %s\nalgorithm:   %s\ncreated:     %s\n\nDNS TXT record:\n%s. IN TXT %s\n",
			termSafe(d.Name), subaccountText(d.Subaccount), d.Shared, termSafe(d.Selector), d.Algorithm,
			d.CreatedAt.UTC().Format(time.RFC3339), termSafe(rname), quoteTXT(rvalue))
		return nil
	default: // delete
		if err := st.DeleteDomain(ctx, strings.ToLower(pos[0])); err != nil {
			return fmt.Errorf("domains delete: %w", notFound(err, "sending domain", pos[0], "smtpgw domains list"))
		}
		fmt.Fprintf(e.stdout, "Deleted sending domain %s.\n", strings.ToLower(pos[0]))
		return nil
	}
}

// quoteTXT splits a TXT value into quoted strings of at most 255 bytes, as
// zone files need for 2048-bit RSA keys.
func quoteTXT(v string) string {
	var parts []string
	for len(v) > 255 {
		parts = append(parts, strconv.Quote(v[:255]))
		v = v[255:]
	}
	parts = append(parts, strconv.Quote(v))
	return "( " + strings.Join(parts, " ") + " )"
}

const queueUsage = `usage:
  smtpgw queue list  [--state S] [--domain D] [--key ID] [--subaccount N] [--limit N] [--json]
  smtpgw queue show  ID [--json]
  smtpgw queue retry ID
  smtpgw queue delete ID
  smtpgw queue stats [--json]`

// queueUsages is the usage line of each queue subcommand.
var queueUsages = map[string]string{
	"list":   "usage: smtpgw queue list [--state S] [--domain D] [--key ID] [--subaccount N] [--limit N] [--json]",
	"show":   "usage: smtpgw queue show ID [--json]",
	"retry":  "usage: smtpgw queue retry ID",
	"delete": "usage: smtpgw queue delete ID",
	"stats":  "usage: smtpgw queue stats [--json]",
}

var recipientStates = []string{store.StateQueued, store.StateDeferred, store.StateDelivered, store.StateBounced, store.StateExpired}

func cmdQueue(ctx context.Context, args []string, e env) (err error) {
	if len(args) == 0 {
		return usagef("queue: missing subcommand\n%s", queueUsage)
	}
	sub, rest := args[0], args[1:]
	usage, ok := queueUsages[sub]
	switch {
	case sub == "-h" || sub == "--help" || sub == "help":
		fmt.Fprintln(e.stdout, queueUsage)
		return nil
	case !ok:
		return usagef("queue: unknown subcommand %q\n%s", sub, queueUsage)
	}
	// Each subcommand has only its own flags, so "queue show -h" lists
	// those of show.
	fs, cfgPath := newFlags("queue " + sub)
	var (
		asJSON     = new(bool)
		state      = new(string)
		domain     = new(string)
		keyID      = new(string)
		subaccount subaccountFlag
		limit      = new(int)
	)
	if sub == "list" || sub == "show" || sub == "stats" {
		fs.BoolVar(asJSON, "json", false, "print JSON")
	}
	if sub == "list" {
		fs.StringVar(state, "state", "", "only messages with a recipient in this state ("+strings.Join(recipientStates, ", ")+")")
		fs.StringVar(domain, "domain", "", "only messages with a recipient at this domain")
		fs.StringVar(keyID, "key", "", "only messages injected with this API key id")
		fs.Var(&subaccount, "subaccount", "only messages of this subaccount (0: master account; default: all)")
		fs.IntVar(limit, "limit", 100, "at most this many messages")
	}
	pos, err := parse(fs, usage, rest, e)
	if err != nil {
		return err
	}
	needID := sub == "show" || sub == "retry" || sub == "delete"
	if needID && len(pos) != 1 {
		return usagef("queue %s: give exactly one message id\n%s", sub, queueUsage)
	}
	if !needID && len(pos) > 0 {
		return usagef("queue %s: unexpected argument %q", sub, pos[0])
	}
	if *state != "" && !slices.Contains(recipientStates, *state) {
		return usagef("queue list: --state must be one of %s", strings.Join(recipientStates, ", "))
	}
	cfg, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	if cfg.Relay.Mode == config.ModeHold && !*asJSON && sub != "delete" {
		// The relay delivers nothing: say so wherever the queue is shown.
		defer fmt.Fprintln(e.stdout, "\nHELD: relay.mode is \"hold\" in this configuration, so queued mail is not delivered.\n"+
			"Set relay.mode = \"smarthost\" (with relay.smarthost) or \"mx\" and reload the gateway (SIGHUP) to deliver it.")
	}
	switch sub {
	case "list":
		f := store.QueueFilter{State: *state, Domain: strings.ToLower(*domain), KeyID: *keyID, Limit: *limit,
			Subaccount: subaccount.ptr()}
		ms, err := st.ListMessages(ctx, f)
		if err != nil {
			return fmt.Errorf("queue list: %w", err)
		}
		if *asJSON {
			return writeJSON(e.stdout, map[string]any{"results": messagesJSON(ms)})
		}
		if len(ms) == 0 {
			fmt.Fprintln(e.stdout, "No messages match.")
			return nil
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCREATED\tSIZE\tKEY\tSUBACCOUNT\tFROM\tRECIPIENTS")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t<%s>\t%s\n", m.ID, m.CreatedAt.UTC().Format(time.RFC3339),
				m.Size, dash(m.KeyID), subaccountText(m.Subaccount), termSafe(m.MailFrom), termSafe(recipientSummary(m.Recipients)))
		}
		return tw.Flush()
	case "show":
		m, err := st.GetMessage(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("queue show: %w", notFound(err, "message", pos[0], "smtpgw queue list"))
		}
		if *asJSON {
			return writeJSON(e.stdout, map[string]any{"results": messagesJSON([]*store.Message{m})[0]})
		}
		fmt.Fprintf(e.stdout, "id:          %s\ncreated:     %s\nfrom:        <%s>\nkey:         %s\nsubaccount:  %s\ncampaign:    %s\nsize:        %d bytes\n\n",
			m.ID, m.CreatedAt.UTC().Format(time.RFC3339), termSafe(m.MailFrom), dash(m.KeyID), subaccountText(m.Subaccount),
			termSafe(dash(m.CampaignID)), m.Size)
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RECIPIENT\tSTATE\tATTEMPTS\tNEXT ATTEMPT\tLAST REPLY")
		for _, r := range m.Recipients {
			next := "-"
			if r.State == store.StateQueued || r.State == store.StateDeferred {
				next = r.NextAttempt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", termSafe(r.Address), r.State, r.Attempts, next, termSafe(dash(r.LastReply)))
		}
		return tw.Flush()
	case "retry":
		n, err := st.RetryMessage(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("queue retry: %w", notFound(err, "message", pos[0], "smtpgw queue list"))
		}
		fmt.Fprintf(e.stdout, "%d recipient(s) of %s are due now.\n", n, pos[0])
		return nil
	case "delete":
		if err := st.DeleteMessage(ctx, pos[0]); err != nil {
			return fmt.Errorf("queue delete: %w", notFound(err, "message", pos[0], "smtpgw queue list"))
		}
		fmt.Fprintf(e.stdout, "Deleted message %s from the queue (its events are kept).\n", pos[0])
		return nil
	default: // stats
		s, err := st.Stats(ctx)
		if err != nil {
			return fmt.Errorf("queue stats: %w", err)
		}
		var age time.Duration
		if !s.OldestQueued.IsZero() {
			age = time.Since(s.OldestQueued).Truncate(time.Second)
		}
		if *asJSON {
			out := map[string]any{"recipients_by_state": s.ByState, "oldest_queued_age_seconds": int64(age.Seconds()),
				"relay_mode": cfg.Relay.Mode}
			if !s.OldestQueued.IsZero() {
				out["oldest_queued"] = s.OldestQueued.UTC().Format(time.RFC3339)
			}
			return writeJSON(e.stdout, map[string]any{"results": out})
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STATE\tRECIPIENTS")
		for _, state := range recipientStates {
			fmt.Fprintf(tw, "%s\t%d\n", state, s.ByState[state])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if s.OldestQueued.IsZero() {
			fmt.Fprintln(e.stdout, "\nNothing waiting for delivery.")
		} else {
			fmt.Fprintf(e.stdout, "\nOldest message waiting for delivery: %s old (since %s).\n", age, s.OldestQueued.UTC().Format(time.RFC3339))
		}
		return nil
	}
}

func messagesJSON(ms []*store.Message) []map[string]any {
	out := make([]map[string]any, 0, len(ms))
	for _, m := range ms {
		rcpts := make([]map[string]any, 0, len(m.Recipients))
		for _, r := range m.Recipients {
			rcpts = append(rcpts, map[string]any{"address": r.Address, "state": r.State, "attempts": r.Attempts,
				"next_attempt": r.NextAttempt.UTC().Format(time.RFC3339), "last_reply": r.LastReply})
		}
		out = append(out, map[string]any{"id": m.ID, "created_at": m.CreatedAt.UTC().Format(time.RFC3339),
			"mail_from": m.MailFrom, "key_id": m.KeyID, "subaccount_id": m.Subaccount, "campaign_id": m.CampaignID,
			"size": m.Size, "recipients": rcpts})
	}
	return out
}

// recipientSummary counts a message's recipients by state: "2 delivered, 1 deferred".
func recipientSummary(rs []*store.Recipient) string {
	n := map[string]int{}
	for _, r := range rs {
		n[r.State]++
	}
	var parts []string
	for _, s := range recipientStates {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	return strings.Join(parts, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// listOrOne checks the positional arguments of a command whose "list"
// subcommand takes none and whose other subcommands take exactly one
// (what names it, e.g. "one domain").
func listOrOne(pos []string, cmd, sub, what, usage string) error {
	switch {
	case sub == "list" && len(pos) > 0:
		return usagef("%s list: unexpected argument %q", cmd, pos[0])
	case sub != "list" && len(pos) != 1:
		return usagef("%s %s: give exactly %s\n%s", cmd, sub, what, usage)
	}
	return nil
}
