package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
)

const keysUsage = `usage:
  smtpgw keys create --label L --grant G [--grant G...] [--subaccount N] [--allowed-ip CIDR...]
                     [--expires RFC3339|DURATION] [--limit N/m|h|d|mo ...] [--json]
  smtpgw keys list   [--label TEXT] [--subaccount N] [--grant G] [--limit N] [--cursor C] [--json]
  smtpgw keys show   ID [--json]
  smtpgw keys update ID [--label L] [--grant G...] [--subaccount N] [--allowed-ip CIDR...] [--any-ip]
                     [--expires RFC3339|DURATION|never] [--limit N/m|h|d|mo ...] [--no-limits] [--json]
  smtpgw keys rotate ID [--overlap DURATION] [--json]
  smtpgw keys delete ID`

// keyJSON is a key as `keys --json` prints it: the HTTP API's shape, so the
// two cannot drift.
type keyJSON = api.Key

func cmdKeys(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		return usagef("keys: missing subcommand\n%s", keysUsage)
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "create":
		return keysCreate(ctx, rest, e)
	case "list":
		return keysList(ctx, rest, e)
	case "show":
		return keysShow(ctx, rest, e)
	case "update":
		return keysUpdate(ctx, rest, e)
	case "delete", "revoke":
		return keysDelete(ctx, rest, e)
	case "rotate":
		return keysRotate(ctx, rest, e)
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, keysUsage)
		return nil
	default:
		return usagef("keys: unknown subcommand %q\n%s", sub, keysUsage)
	}
}

func keysCreate(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("keys create")
	label := fs.String("label", "", "name for the key (required)")
	var grants, ips stringList
	fs.Var(&grants, "grant", "grant, repeatable (e.g. smtp/inject)")
	fs.Var(&ips, "allowed-ip", "IP address or CIDR prefix allowed to use the key, repeatable (default: any)")
	sub := fs.Int64("subaccount", 0, "subaccount id the key belongs to (default: master account)")
	expires := fs.String("expires", "", "expiry: an RFC 3339 time or a duration from now (720h, 90d)")
	var lims stringList
	fs.Var(&lims, "limit", "sending limit N/unit (units m, h, d, mo), repeatable, e.g. --limit 1000/h --limit 50000/d")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, keysUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("keys create: unexpected argument %q\n%s", pos[0], keysUsage)
	}
	var exp time.Time
	if *expires != "" {
		if exp, err = auth.ParseExpiry(*expires, time.Now()); err != nil {
			return usagef("keys create: --expires: %v", errors.Unwrap(err))
		}
	}
	limitSet, err := parseLimits("keys create", store.Limits{}, lims)
	if err != nil {
		return err
	}
	if *label == "" {
		return usagef("keys create: --label is required (e.g. --label my-app)")
	}
	if len(grants) == 0 {
		return usagef("keys create: at least one --grant is required (e.g. --grant smtp/inject)")
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	key, k, err := auth.NewManager(st, nil).Create(ctx, auth.CreateParams{
		Label: *label, Grants: grants, Subaccount: *sub, AllowedIPs: ips, ExpiresAt: exp,
	})
	if err != nil {
		return err // auth names the operation: "create key: ..."
	}
	if !limitSet.IsZero() {
		if err := limits.Save(ctx, st, nil, limits.KeyScope(k.ID), limitSet); err != nil {
			return fmt.Errorf("keys create: key %s created, its limits not saved (run keys update %s --limit ...): %w", k.ID, k.ID, err)
		}
	}
	if *asJSON {
		j := api.NewKey(k)
		j.Key = key
		j.Limits = api.NewLimits(limitSet)
		return writeJSON(e.stdout, map[string]any{"results": j})
	}
	fmt.Fprintf(e.stdout, "Created API key %s (%q).\n\n    %s\n\n", k.ID, termSafe(k.Label), key)
	if !exp.IsZero() {
		fmt.Fprintf(e.stdout, "It expires at %s.\n", k.ExpiresAt.Format(time.RFC3339))
	}
	if !limitSet.IsZero() {
		fmt.Fprintf(e.stdout, "Sending limits: %s.\n", limits.String(limitSet))
	}
	fmt.Fprintln(e.stdout, "Copy this key now: it is shown only this once and cannot be recovered.")
	fmt.Fprintln(e.stdout, "Use it as the SMTP password with the username SMTP_Injection.")
	return nil
}

// keysListPage is the page size keys list reads at a time when it lists
// every key: memory stays flat whatever the number of keys.
const keysListPage = 1000

func keysList(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("keys list")
	asJSON := fs.Bool("json", false, "print JSON")
	label := fs.String("label", "", "only keys whose label contains this text (ASCII case ignored)")
	grant := fs.String("grant", "", "only keys holding this grant")
	sub := fs.Int64("subaccount", -1, "only keys of this subaccount (0: master account)")
	limit := fs.Int("limit", 0, fmt.Sprintf("list one page of at most this many keys (1 to %d) and print the cursor of the next", store.MaxKeyPage))
	cursor := fs.String("cursor", "", "start after the page that printed this cursor")
	pos, err := parse(fs, keysUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("keys list: unexpected argument %q\n%s", pos[0], keysUsage)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["limit"] && (*limit < 1 || *limit > store.MaxKeyPage) {
		return usagef("keys list: --limit must be from 1 to %d, not %d", store.MaxKeyPage, *limit)
	}
	f := store.KeyFilter{Label: *label, Grant: *grant, Cursor: *cursor, Limit: keysListPage}
	if set["subaccount"] {
		if *sub < 0 {
			return usagef("keys list: --subaccount must be 0 (master account) or a subaccount id")
		}
		f.Subaccount = sub
	}
	paged := set["limit"] || set["cursor"]
	if set["limit"] {
		f.Limit = *limit
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	m := auth.NewManager(st, nil)
	out := newKeyLister(e, *asJSON)
	for {
		keys, next, err := m.List(ctx, f)
		if err != nil {
			var pe *auth.ParamError
			if errors.As(err, &pe) {
				return usagef("keys list: --cursor %q is not a cursor printed by keys list: copy it from the previous page, or leave it out to start again", f.Cursor)
			}
			return fmt.Errorf("keys list: %w", err)
		}
		if err := out.page(keys); err != nil {
			return err
		}
		if next == "" || paged {
			return out.end(next, f.Limit)
		}
		f.Cursor = next
	}
}

// keyLister prints keys a page at a time, as a table or as JSON, never
// holding more than one page.
type keyLister struct {
	e      env
	asJSON bool
	n      int  // keys printed so far
	inert  bool // a grant without effect was marked
}

func newKeyLister(e env, asJSON bool) *keyLister { return &keyLister{e: e, asJSON: asJSON} }

// page prints one page of keys. The table's columns are aligned page by
// page.
func (l *keyLister) page(keys []*store.Key) error {
	if l.asJSON {
		for _, k := range keys {
			b, err := json.MarshalIndent(api.NewKey(k), "    ", "  ")
			if err != nil {
				return err
			}
			sep := ",\n"
			if l.n == 0 {
				sep = "{\n  \"results\": [\n"
			}
			if _, err := fmt.Fprintf(l.e.stdout, "%s    %s", sep, b); err != nil {
				return err
			}
			l.n++
		}
		return nil
	}
	if len(keys) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(l.e.stdout, 0, 4, 2, ' ', 0)
	if l.n == 0 {
		fmt.Fprintln(tw, "ID\tLABEL\tSHORT KEY\tGRANTS\tSUBACCOUNT\tALLOWED IPS\tEXPIRES\tLAST USED")
	}
	for _, k := range keys {
		g, anyInert := grantList(k.Grants)
		l.inert = l.inert || anyInert
		fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%s\t%s\t%s\n", k.ID, termSafe(k.Label), k.ShortKey, g,
			subaccountText(k.Subaccount), ipsText(k.AllowedIPs), expiresText(k), lastUsedText(k))
		l.n++
	}
	return tw.Flush()
}

// end closes the listing; next is the cursor of the page after the last
// one printed ("" if none), limit its size.
func (l *keyLister) end(next string, limit int) error {
	if l.asJSON {
		if l.n == 0 {
			fmt.Fprint(l.e.stdout, "{\n  \"results\": [")
		} else {
			fmt.Fprint(l.e.stdout, "\n  ")
		}
		c, _ := json.Marshal(next)
		_, err := fmt.Fprintf(l.e.stdout, "],\n  \"next_cursor\": %s\n}\n", c)
		return err
	}
	if l.n == 0 {
		fmt.Fprintln(l.e.stdout, "No API keys. Create one with: smtpgw keys create --label app --grant smtp/inject")
	}
	if l.inert {
		fmt.Fprintln(l.e.stdout, "\n* grant accepted for SparkPost compatibility; it has no effect in smtpgw.")
	}
	if next != "" {
		fmt.Fprintf(l.e.stdout, "\nMore keys: smtpgw keys list --limit %d --cursor %s\n", limit, next)
	}
	return nil
}

func keysShow(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("keys show")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, keysUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("keys show: give exactly one key id\n%s", keysUsage)
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	k, err := auth.NewManager(st, nil).Get(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("keys show: %w", notFound(err, "API key", pos[0], "smtpgw keys list"))
	}
	return printKey(ctx, st, k, *asJSON, e)
}

// printKey prints a key with its limits and their current windows.
func printKey(ctx context.Context, st store.Store, k *store.Key, asJSON bool, e env) error {
	l, us, err := limits.Usages(ctx, st, limits.KeyScope(k.ID), time.Now())
	if err != nil {
		return err
	}
	if asJSON {
		j := api.NewKey(k)
		j.Limits, j.Usage = api.NewLimits(l), api.NewUsage(us)
		return writeJSON(e.stdout, map[string]any{"results": j})
	}
	g, inert := grantList(k.Grants)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", k.ID)
	fmt.Fprintf(tw, "label:\t%s\n", termSafe(k.Label))
	fmt.Fprintf(tw, "short key:\t%s…\n", k.ShortKey)
	fmt.Fprintf(tw, "grants:\t%s\n", g)
	fmt.Fprintf(tw, "subaccount:\t%s\n", subaccountText(k.Subaccount))
	fmt.Fprintf(tw, "allowed IPs:\t%s\n", ipsText(k.AllowedIPs))
	fmt.Fprintf(tw, "created:\t%s\n", k.CreatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "updated:\t%s\n", k.UpdatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "expires:\t%s\n", expiresText(k))
	fmt.Fprintf(tw, "last used:\t%s\n", lastUsedText(k))
	fmt.Fprintf(tw, "limits:\t%s\n", limits.String(l))
	for _, u := range us {
		fmt.Fprintf(tw, "  this %s:\t%d of %d used, %d remaining (resets %s)\n", u.Unit.Name(), u.Used, u.Max,
			u.Remaining(), u.Until.Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if inert {
		fmt.Fprintln(e.stdout, "\n* grant accepted for SparkPost compatibility; it has no effect in smtpgw.")
	}
	return nil
}

func keysUpdate(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("keys update")
	label := fs.String("label", "", "new label")
	var grants, ips stringList
	fs.Var(&grants, "grant", "replace the grants, repeatable")
	fs.Var(&ips, "allowed-ip", "replace the allowed IPs, repeatable")
	anyIP := fs.Bool("any-ip", false, "remove the IP restriction")
	sub := fs.Int64("subaccount", -1, "move the key to this subaccount (0: master account)")
	expires := fs.String("expires", "", "expiry: an RFC 3339 time, a duration from now (720h, 90d), or never")
	var lims stringList
	fs.Var(&lims, "limit", "set a sending limit N/unit (units m, h, d, mo; 0/h removes the hourly one), repeatable")
	noLimits := fs.Bool("no-limits", false, "remove every sending limit of the key")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, keysUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("keys update: give exactly one key id\n%s", keysUsage)
	}
	if *noLimits && len(lims) > 0 {
		return usagef("keys update: --no-limits and --limit contradict each other: give one")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *anyIP && len(ips) > 0 {
		return usagef("keys update: --any-ip and --allowed-ip contradict each other: give one")
	}
	var p auth.UpdateParams
	if set["label"] {
		p.Label = label
	}
	if set["grant"] {
		p.Grants = grants
	}
	if set["subaccount"] {
		if *sub < 0 {
			return usagef("keys update: --subaccount must be 0 (master account) or a subaccount id")
		}
		p.Subaccount = sub
	}
	if set["allowed-ip"] {
		p.AllowedIPs = ips
	}
	p.ClearAllowedIPs = *anyIP
	if set["expires"] {
		if strings.EqualFold(strings.TrimSpace(*expires), "never") {
			p.ClearExpiry = true
		} else if p.ExpiresAt, err = auth.ParseExpiry(*expires, time.Now()); err != nil {
			return usagef("keys update: --expires: %v (or never)", errors.Unwrap(err))
		}
	}
	keyChange := set["label"] || set["grant"] || set["subaccount"] || set["allowed-ip"] || *anyIP || set["expires"]
	if !keyChange && len(lims) == 0 && !*noLimits {
		return usagef("keys update: nothing to change: give --label, --grant, --subaccount, --allowed-ip, --any-ip, --expires, --limit or --no-limits")
	}
	// Check the limits before changing anything.
	if _, err := parseLimits("keys update", store.Limits{}, lims); err != nil {
		return err
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	m := auth.NewManager(st, nil)
	var k *store.Key
	if keyChange {
		k, err = m.Update(ctx, pos[0], p)
	} else {
		k, err = m.Get(ctx, pos[0])
	}
	if err != nil {
		return notFound(err, "API key", pos[0], "smtpgw keys list") // auth names the operation
	}
	if len(lims) > 0 || *noLimits {
		scope := limits.KeyScope(k.ID)
		cur, err := st.GetLimits(ctx, scope)
		if err != nil {
			return fmt.Errorf("keys update: %w", err)
		}
		if *noLimits {
			cur = store.Limits{}
		}
		if cur, err = parseLimits("keys update", cur, lims); err != nil {
			return err
		}
		if err := limits.Save(ctx, st, nil, scope, cur); err != nil {
			return fmt.Errorf("keys update: %w", err)
		}
	}
	return printKey(ctx, st, k, *asJSON, e)
}

// parseLimits applies --limit values (N/unit, 0 removes that unit's
// limit) to l.
func parseLimits(cmd string, l store.Limits, vals []string) (store.Limits, error) {
	for _, v := range vals {
		u, n, err := limits.Parse(v)
		if err != nil {
			return l, usagef("%s: --limit: %v", cmd, err)
		}
		limits.Set(&l, u, n)
	}
	return l, nil
}

func keysRotate(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("keys rotate")
	overlapText := fs.String("overlap", "24h", "how long the old key keeps working (e.g. 24h, 90m, 7d; 0: stops now)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, keysUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("keys rotate: give exactly one key id\n%s", keysUsage)
	}
	overlap, err := auth.ParseOverlap(*overlapText)
	if err != nil {
		return usagef("keys rotate: --overlap: %v", errors.Unwrap(err))
	}
	_, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	key, k, old, err := auth.NewManager(st, nil).Rotate(ctx, pos[0], overlap)
	if err != nil {
		return notFound(err, "API key", pos[0], "smtpgw keys list") // auth names the operation
	}
	if *asJSON {
		j := api.NewKey(k)
		j.Key = key
		l, err := st.GetLimits(ctx, limits.KeyScope(k.ID))
		if err != nil {
			return err
		}
		j.Limits = api.NewLimits(l)
		return writeJSON(e.stdout, map[string]any{"results": map[string]any{
			"key": j, "replaces": map[string]string{"id": old.ID, "expires_at": old.ExpiresAt.Format(time.RFC3339)},
		}})
	}
	fmt.Fprintf(e.stdout, "Created API key %s (%q) to replace %s.\n\n    %s\n\n", k.ID, termSafe(k.Label), old.ID, key)
	fmt.Fprintln(e.stdout, "Copy this key now: it is shown only this once and cannot be recovered.")
	fmt.Fprintf(e.stdout, "The old key %s keeps working until %s: switch your applications to the new key before then.\n",
		old.ID, old.ExpiresAt.Format(time.RFC3339))
	return nil
}

func keysDelete(ctx context.Context, args []string, e env) (err error) {
	fs, cfgPath := newFlags("keys delete")
	pos, err := parse(fs, keysUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("keys delete: give exactly one key id\n%s", keysUsage)
	}
	cfg, st, err := openStore(ctx, *cfgPath, e)
	if err != nil {
		return err
	}
	defer closeStore(st, &err)
	if err := auth.NewManager(st, nil).Delete(ctx, pos[0]); err != nil {
		return fmt.Errorf("keys delete: %w", notFound(err, "API key", pos[0], "smtpgw keys list"))
	}
	fmt.Fprintf(e.stdout, "Deleted API key %s. Running gateways refuse it within auth.cache_ttl (%s).\n",
		pos[0], cfg.Auth.CacheTTL.Duration)
	return nil
}

// grantList joins grants, marking with * those accepted for SparkPost
// compatibility that have no effect here.
func grantList(grants []string) (string, bool) {
	inert := false
	parts := make([]string, len(grants))
	for i, g := range grants {
		parts[i] = g
		if !auth.IsEnforced(g) {
			parts[i] += "*"
			inert = true
		}
	}
	return strings.Join(parts, ","), inert
}

func subaccountText(n int64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

func ipsText(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "any"
	}
	return strings.Join(api.PrefixStrings(ps), ",")
}

// lastUsedText is the key's last use and its client address.
func lastUsedText(k *store.Key) string {
	if k.LastUsedAt.IsZero() {
		return "never"
	}
	s := k.LastUsedAt.UTC().Format(time.RFC3339)
	if k.LastUsedIP.IsValid() {
		s += " from " + k.LastUsedIP.String()
	}
	return s
}

// expiresText is the key's expiry, marked when past.
func expiresText(k *store.Key) string {
	switch {
	case k.ExpiresAt.IsZero():
		return "never"
	case k.Expired(time.Now()):
		return k.ExpiresAt.UTC().Format(time.RFC3339) + " (expired)"
	}
	return k.ExpiresAt.UTC().Format(time.RFC3339)
}
