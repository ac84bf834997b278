package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/audit"
)

const auditUsage = `usage:
  smtpgw audit [--since DURATION] [--subaccount N] [--limit N] [--cursor C] [--json]

Lists the audit log, newest first: every change to API keys, sending
domains, subaccounts, webhooks and suppressions, with who made it (the API
key, or "cli" with the OS user and host) and from which address.`

func cmdAudit(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("audit")
	asJSON := fs.Bool("json", false, "print JSON (with before and after)")
	since := fs.Duration("since", 0, "only entries newer than this, e.g. 24h (default: every entry kept)")
	var subaccount subaccountFlag
	fs.Var(&subaccount, "subaccount", "only changes to this subaccount's objects (0: master account; default: all)")
	limit := fs.Int("limit", 100, "at most this many entries")
	cursor := fs.String("cursor", "", "continue after the previous page (the cursor it printed)")
	pos, err := parse(fs, auditUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("audit: unexpected argument %q\n%s", pos[0], auditUsage)
	}
	if *limit < 1 {
		return usagef("audit: --limit must be at least 1, not %d", *limit)
	}
	if *since < 0 {
		return usagef("audit: --since must be a positive duration such as 24h, not %s", *since)
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	f := audit.Filter{Limit: *limit, Cursor: *cursor, Subaccount: subaccount.ptr()}
	if *since > 0 {
		f.Since = time.Now().Add(-*since)
	}
	p, err := audit.List(ctx, st, f)
	if errors.Is(err, audit.ErrBadCursor) {
		return usagef("audit: --cursor %q is not a cursor this command printed", *cursor)
	}
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if *asJSON {
		out := make([]api.AuditEntry, 0, len(p.Entries))
		for _, en := range p.Entries {
			out = append(out, api.NewAuditEntry(en))
		}
		res := map[string]any{"results": out}
		if p.Next != "" {
			res["next_cursor"] = p.Next
		}
		return writeJSON(e.stdout, res)
	}
	if len(p.Entries) == 0 {
		fmt.Fprintln(e.stdout, "No audit entries match.")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTION\tOBJECT\tID\tSUBACCOUNT\tBY\tFROM")
	for _, en := range p.Entries {
		a := en.Actor
		by := a.Via
		switch {
		case a.KeyID != "":
			by = fmt.Sprintf("%s key %s (%s…)", a.Via, a.KeyID, a.ShortKey)
		case a.User != "" || a.Host != "":
			by = fmt.Sprintf("%s %s@%s", a.Via, a.User, a.Host)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", en.Time.UTC().Format(time.RFC3339), en.Action, en.ObjectType,
			termSafe(en.ObjectID), subaccountText(en.Subaccount), termSafe(by), dash(a.IP))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p.Next != "" {
		fmt.Fprintf(e.stdout, "\nMore entries: smtpgw audit --cursor %s --limit %d\n", p.Next, *limit)
	}
	return nil
}

// termSafe returns s as it is when every character is printable, quoted
// with escapes otherwise, so stored text cannot drive the terminal.
func termSafe(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
