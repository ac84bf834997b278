package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

const suppressionsUsage = `usage:
  smtpgw suppressions add    RECIPIENT [--type transactional|non_transactional|both] [--description D] [--subaccount N]
  smtpgw suppressions list   [--subaccount N] [--type T] [--domain D] [--limit N] [--cursor C] [--json]
  smtpgw suppressions show   RECIPIENT [--subaccount N] [--json]
  smtpgw suppressions delete RECIPIENT [--type T] [--subaccount N]`

func cmdSuppressions(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		return usagef("suppressions: missing subcommand\n%s", suppressionsUsage)
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "add":
		return suppressionsAdd(ctx, rest, e)
	case "list":
		return suppressionsList(ctx, rest, e)
	case "show":
		return suppressionsShow(ctx, rest, e)
	case "delete":
		return suppressionsDelete(ctx, rest, e)
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, suppressionsUsage)
		return nil
	default:
		return usagef("suppressions: unknown subcommand %q\n%s", sub, suppressionsUsage)
	}
}

// typesOf expands --type: "both" (the default) is the two types.
func typesOf(cmd, t string) ([]string, error) {
	switch t {
	case "", "both":
		return []string{store.SuppressTransactional, store.SuppressNonTransactional}, nil
	case store.SuppressTransactional, store.SuppressNonTransactional:
		return []string{t}, nil
	}
	return nil, usagef("suppressions %s: --type must be transactional, non_transactional or both, not %q", cmd, t)
}

// oneRecipient returns the single positional argument.
func oneRecipient(cmd string, pos []string) (string, error) {
	if len(pos) != 1 {
		return "", usagef("suppressions %s: give one recipient address\n%s", cmd, suppressionsUsage)
	}
	return pos[0], nil
}

// subaccountGiven reports whether --subaccount was given.
func subaccountGiven(fs *flag.FlagSet) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "subaccount" })
	return given
}

func suppressionsAdd(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("suppressions add")
	typ := fs.String("type", "both", "transactional, non_transactional or both")
	desc := fs.String("description", "", "why the recipient is suppressed")
	sub := fs.Int64("subaccount", 0, "the subaccount whose list it goes on (default: the master account's, which applies to every subaccount)")
	pos, err := parse(fs, suppressionsUsage, args, e)
	if err != nil {
		return err
	}
	rcpt, err := oneRecipient("add", pos)
	if err != nil {
		return err
	}
	types, err := typesOf("add", *typ)
	if err != nil {
		return err
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	var entries []suppression.Entry
	for _, t := range types {
		entries = append(entries, suppression.Entry{Recipient: rcpt, Type: t, Description: *desc})
	}
	if err := suppression.New(st, nil).Upsert(ctx, *sub, entries); err != nil {
		return fmt.Errorf("suppressions add: %w", err)
	}
	fmt.Fprintf(e.stdout, "Suppressed %q for %s mail (%s list). Other running gateways apply it within 5 s.\n",
		rcpt, *typ, accountText(*sub))
	return nil
}

func accountText(sub int64) string {
	if sub == 0 {
		return "the master account's"
	}
	return fmt.Sprintf("subaccount %d's", sub)
}

func suppressionsList(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("suppressions list")
	typ := fs.String("type", "", "only this type (transactional or non_transactional)")
	domain := fs.String("domain", "", "only recipients at this domain")
	sub := fs.Int64("subaccount", 0, "only this account's list (0: the master account's; default: every list)")
	limit := fs.Int("limit", suppression.DefaultPerPage, fmt.Sprintf("entries per page (at most %d)", suppression.MaxPerPage))
	cursor := fs.String("cursor", "", "continue after the page that printed this cursor")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, suppressionsUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("suppressions list: unexpected argument %q\n%s", pos[0], suppressionsUsage)
	}
	q := suppression.Query{Domain: *domain, Cursor: *cursor, PerPage: *limit}
	if *limit == 0 {
		q.PerPage = -1
	}
	if *typ != "" {
		q.Types = []string{*typ}
	}
	if subaccountGiven(fs) {
		q.Subaccount = sub
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	p, err := suppression.New(st, nil).Search(ctx, q)
	if err != nil {
		return fmt.Errorf("suppressions list: %w", err)
	}
	if *asJSON {
		out := make([]api.Suppression, 0, len(p.Results))
		for _, r := range p.Results {
			out = append(out, api.NewSuppression(r))
		}
		return writeJSON(e.stdout, map[string]any{"results": out, "total_count": p.TotalCount, "next_cursor": p.NextCursor})
	}
	if p.TotalCount == 0 {
		fmt.Fprintln(e.stdout, "The suppression list is empty. Add with: smtpgw suppressions add user@example.com")
		return nil
	}
	printSuppressions(p.Results, e)
	if p.NextCursor != "" {
		fmt.Fprintf(e.stdout, "\n%d of %d entries. Next page: smtpgw suppressions list --cursor %s\n", len(p.Results), p.TotalCount, p.NextCursor)
	}
	return nil
}

func printSuppressions(rows []store.Suppression, e env) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECIPIENT\tTYPE\tACCOUNT\tSOURCE\tDESCRIPTION\tUPDATED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", termSafe(r.Recipient), r.Type, subaccountText(r.Subaccount), r.Source,
			dash(termSafe(r.Description)), r.UpdatedAt.Format("2006-01-02 15:04:05Z"))
	}
	_ = tw.Flush() // a closed stdout is not worth an error here
}

func suppressionsShow(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("suppressions show")
	sub := fs.Int64("subaccount", 0, "only this account's list (default: every list)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, suppressionsUsage, args, e)
	if err != nil {
		return err
	}
	rcpt, err := oneRecipient("show", pos)
	if err != nil {
		return err
	}
	var scope *int64
	if subaccountGiven(fs) {
		scope = sub
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	rows, err := suppression.New(st, nil).Get(ctx, scope, rcpt)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%q is not on the suppression list", rcpt)
	}
	if err != nil {
		return fmt.Errorf("suppressions show: %w", err)
	}
	if *asJSON {
		out := make([]api.Suppression, 0, len(rows))
		for _, r := range rows {
			out = append(out, api.NewSuppression(r))
		}
		return writeJSON(e.stdout, map[string]any{"results": out})
	}
	printSuppressions(rows, e)
	return nil
}

func suppressionsDelete(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("suppressions delete")
	typ := fs.String("type", "both", "transactional, non_transactional or both")
	sub := fs.Int64("subaccount", 0, "the subaccount whose list it is on (default: the master account's)")
	pos, err := parse(fs, suppressionsUsage, args, e)
	if err != nil {
		return err
	}
	rcpt, err := oneRecipient("delete", pos)
	if err != nil {
		return err
	}
	if _, err := typesOf("delete", *typ); err != nil {
		return err
	}
	t := *typ
	if t == "both" {
		t = ""
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	err = suppression.New(st, nil).Delete(ctx, *sub, rcpt, t)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%q is not on %s suppression list (see smtpgw suppressions show %s)", rcpt, accountText(*sub), rcpt)
	}
	if err != nil {
		return fmt.Errorf("suppressions delete: %w", err)
	}
	fmt.Fprintf(e.stdout, "Removed %q from %s suppression list (%s).\n", rcpt, accountText(*sub), *typ)
	return nil
}
