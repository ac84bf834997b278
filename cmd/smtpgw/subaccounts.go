package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/subaccounts"
)

const subaccountsUsage = `usage:
  smtpgw subaccounts create --name NAME [--id N] [--key-label L --key-grant G... [--key-allowed-ip CIDR...]] [--json]
  smtpgw subaccounts list   [--json]
  smtpgw subaccounts show   ID [--json]
  smtpgw subaccounts update ID [--name NAME] [--status active|suspended|terminated]
                            [--limit N/m|h|d|mo ...] [--no-limits] [--json]`

func cmdSubaccounts(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		return usagef("subaccounts: missing subcommand\n%s", subaccountsUsage)
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "create":
		return subaccountsCreate(ctx, rest, e)
	case "list":
		return subaccountsList(ctx, rest, e)
	case "show":
		return subaccountsShow(ctx, rest, e)
	case "update":
		return subaccountsUpdate(ctx, rest, e)
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, subaccountsUsage)
		return nil
	default:
		return usagef("subaccounts: unknown subcommand %q\n%s", sub, subaccountsUsage)
	}
}

// subaccountService opens the store and returns the service on it (the
// CLI has no key cache to evict: other processes see a change within
// auth.cache_ttl).
func subaccountService(ctx context.Context, cfgPath string, e env) (*subaccounts.Service, store.Store, error) {
	_, st, err := openStore(ctx, cfgPath, e)
	if err != nil {
		return nil, nil, err
	}
	return subaccounts.New(st, auth.NewManager(st, nil), nil), st, nil
}

func subaccountsCreate(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("subaccounts create")
	name := fs.String("name", "", "name of the subaccount (required)")
	id := fs.Int64("id", 0, "keep this id (e.g. the subaccount's id at SparkPost); default: the next free one")
	label := fs.String("key-label", "", "also create the subaccount's first API key, with this label")
	var grants, ips stringList
	fs.Var(&grants, "key-grant", "grant of that key, repeatable (e.g. smtp/inject)")
	fs.Var(&ips, "key-allowed-ip", "IP address or CIDR prefix allowed to use that key, repeatable (default: any)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, subaccountsUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("subaccounts create: unexpected argument %q\n%s", pos[0], subaccountsUsage)
	}
	if *name == "" {
		return usagef("subaccounts create: --name is required (e.g. --name \"Acme Corp\")")
	}
	setup := *label != "" || len(grants) > 0 || len(ips) > 0
	if setup && (*label == "" || len(grants) == 0) {
		return usagef("subaccounts create: a key needs both --key-label and --key-grant (e.g. --key-label acme-smtp --key-grant smtp/inject)")
	}
	svc, st, err := subaccountService(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	c, err := svc.Create(ctx, subaccounts.CreateParams{ID: *id, Name: *name, SetupKey: setup,
		KeyLabel: *label, KeyGrants: grants, KeyValidIPs: ips})
	if err != nil {
		return err // "create subaccount: name: ..."
	}
	if *asJSON {
		out := api.SubaccountCreated{ID: c.Subaccount.ID}
		if c.KeyRecord != nil {
			out.Key, out.Label, out.ShortKey = c.Key, c.KeyRecord.Label, c.KeyRecord.ShortKey
		}
		return writeJSON(e.stdout, map[string]any{"results": out})
	}
	fmt.Fprintf(e.stdout, "Created subaccount %d (%q).\n", c.Subaccount.ID, c.Subaccount.Name)
	if c.KeyRecord != nil {
		fmt.Fprintf(e.stdout, "Created its API key %s (%q).\n\n    %s\n\n", c.KeyRecord.ID, c.KeyRecord.Label, c.Key)
		fmt.Fprintln(e.stdout, "Copy this key now: it is shown only this once and cannot be recovered.")
		fmt.Fprintln(e.stdout, "Use it as the SMTP password with the username SMTP_Injection.")
	}
	return nil
}

func subaccountsList(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("subaccounts list")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, subaccountsUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("subaccounts list: unexpected argument %q\n%s", pos[0], subaccountsUsage)
	}
	svc, st, err := subaccountService(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	list, err := svc.List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]api.Subaccount, 0, len(list))
		for _, sa := range list {
			out = append(out, api.NewSubaccount(sa))
		}
		return writeJSON(e.stdout, map[string]any{"results": out})
	}
	if len(list) == 0 {
		fmt.Fprintln(e.stdout, "No subaccounts. Create one with: smtpgw subaccounts create --name \"Acme Corp\"")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tCREATED")
	for _, sa := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", sa.ID, termSafe(sa.Name), sa.Status, sa.CreatedAt.Format("2006-01-02 15:04:05Z"))
	}
	return tw.Flush()
}

// subaccountArg parses the ID argument of show and update.
func subaccountArg(cmd string, pos []string) (int64, error) {
	if len(pos) != 1 {
		return 0, usagef("subaccounts %s: give one subaccount id (see smtpgw subaccounts list)\n%s", cmd, subaccountsUsage)
	}
	id, err := strconv.ParseInt(pos[0], 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("subaccounts %s: %q is not a subaccount id (a positive number; see smtpgw subaccounts list)", cmd, pos[0])
	}
	return id, nil
}

// subaccountNotFound words a missing subaccount for the CLI.
func subaccountNotFound(err error, id int64) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no subaccount %d: list them with smtpgw subaccounts list", id)
	}
	return err
}

func subaccountsShow(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("subaccounts show")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, subaccountsUsage, args, e)
	if err != nil {
		return err
	}
	id, err := subaccountArg("show", pos)
	if err != nil {
		return err
	}
	svc, st, err := subaccountService(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	sa, err := svc.Get(ctx, id)
	if err != nil {
		return subaccountNotFound(err, id)
	}
	return printSubaccount(ctx, st, sa, *asJSON, e)
}

// subaccountJSON is a subaccount as subaccounts show/update --json print
// it: the API's object with its sending limits and their current windows.
type subaccountJSON struct {
	api.Subaccount
	Limits *api.Limits          `json:"limits,omitempty"`
	Usage  map[string]api.Usage `json:"usage,omitempty"`
}

func printSubaccount(ctx context.Context, st store.Store, sa *store.Subaccount, asJSON bool, e env) error {
	l, us, err := limits.Usages(ctx, st, limits.SubaccountScope(sa.ID), time.Now())
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(e.stdout, map[string]any{"results": subaccountJSON{
			Subaccount: api.NewSubaccount(sa), Limits: api.NewLimits(l), Usage: api.NewUsage(us)}})
	}
	fmt.Fprintf(e.stdout, "ID:       %d\nName:     %s\nStatus:   %s\nCreated:  %s\nUpdated:  %s\n", sa.ID, termSafe(sa.Name), sa.Status,
		sa.CreatedAt.Format("2006-01-02 15:04:05Z"), sa.UpdatedAt.Format("2006-01-02 15:04:05Z"))
	fmt.Fprintf(e.stdout, "Limits:   %s\n", limits.String(l))
	for _, u := range us {
		fmt.Fprintf(e.stdout, "  this %s: %d of %d used, %d remaining (resets %s)\n", u.Unit.Name(), u.Used, u.Max,
			u.Remaining(), u.Until.Format(time.RFC3339))
	}
	return nil
}

func subaccountsUpdate(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("subaccounts update")
	name := fs.String("name", "", "new name")
	status := fs.String("status", "", "new status: active, suspended (keys refused, queued mail held) or terminated (final; queued mail dropped)")
	var lims stringList
	fs.Var(&lims, "limit", "set a sending limit N/unit (units m, h, d, mo; 0/h removes the hourly one), repeatable, e.g. --limit 20000/d")
	noLimits := fs.Bool("no-limits", false, "remove every sending limit of the subaccount")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, subaccountsUsage, args, e)
	if err != nil {
		return err
	}
	id, err := subaccountArg("update", pos)
	if err != nil {
		return err
	}
	if *noLimits && len(lims) > 0 {
		return usagef("subaccounts update: --no-limits and --limit contradict each other: give one")
	}
	if _, err := parseLimits("subaccounts update", store.Limits{}, lims); err != nil {
		return err
	}
	limitChange := len(lims) > 0 || *noLimits
	var p subaccounts.UpdateParams
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			p.Name = name
		case "status":
			p.Status = status
		}
	})
	if p.Name == nil && p.Status == nil && !limitChange {
		return usagef("subaccounts update: nothing to change: give --name, --status, --limit or --no-limits\n%s", subaccountsUsage)
	}
	svc, st, err := subaccountService(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	var (
		sa *store.Subaccount
		n  int64
	)
	if p.Name != nil || p.Status != nil {
		sa, n, err = svc.Update(ctx, id, p)
	} else {
		sa, err = svc.Get(ctx, id)
	}
	if err != nil {
		return subaccountNotFound(err, id)
	}
	if limitChange {
		if err := setSubaccountLimits(ctx, st, id, lims, *noLimits); err != nil {
			return fmt.Errorf("subaccounts update: %w", err)
		}
	}
	if !*asJSON && n > 0 {
		fmt.Fprintf(e.stdout, "%d queued recipient(s) %s.\n", n, map[string]string{
			store.SubaccountActive: "released for delivery", store.SubaccountSuspended: "held",
			store.SubaccountTerminated: "dropped"}[sa.Status])
	}
	return printSubaccount(ctx, st, sa, *asJSON, e)
}

// setSubaccountLimits applies --limit values (or --no-limits) to the
// subaccount's sending limits; running gateways apply them within
// auth.cache_ttl.
func setSubaccountLimits(ctx context.Context, st store.Store, id int64, lims []string, clear bool) error {
	scope := limits.SubaccountScope(id)
	cur, err := st.GetLimits(ctx, scope)
	if err != nil {
		return err
	}
	if clear {
		cur = store.Limits{}
	}
	if cur, err = parseLimits("subaccounts update", cur, lims); err != nil {
		return err
	}
	return limits.Save(ctx, st, nil, scope, cur)
}
