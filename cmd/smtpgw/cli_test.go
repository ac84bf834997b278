package main

import (
	"regexp"
	"strings"
	"testing"
)

// storeLine is the line admin commands print on stderr naming the store.
var storeLine = regexp.MustCompile(`(?m)^smtpgw: (store|CREATED A NEW, EMPTY STORE): .*\n`)

// TestHelpAndUsageErrors: each subcommand's -h shows its own flags, no
// "(default -1)" sentinel, and a usage error is one line.
func TestHelpAndUsageErrors(t *testing.T) {
	t.Parallel()
	c := cli{t: t, environ: []string{"SMTPGW_DATA_DIR=" + t.TempDir()}}
	show := c.must("queue", "show", "-h")
	if !strings.Contains(show, "queue show ID") || strings.Contains(show, "-state") || strings.Contains(show, "-limit") {
		t.Errorf("queue show -h:\n%s\nwant show's usage without list's flags", show)
	}
	if list := c.must("queue", "list", "-h"); !strings.Contains(list, "-state") {
		t.Errorf("queue list -h lacks --state:\n%s", list)
	}
	for _, args := range [][]string{{"events", "-h"}, {"queue", "list", "-h"}, {"audit", "-h"}} {
		if out := c.must(args...); strings.Contains(out, "(default -1)") || !strings.Contains(out, "-subaccount") {
			t.Errorf("%s:\n%s\nwant --subaccount without (default -1)", strings.Join(args, " "), out)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "list", "--bogus"}, `smtpgw: keys list: flag provided but not defined: -bogus (run "smtpgw keys list -h" for usage)`},
		{[]string{"queue", "show"}, `smtpgw: queue show: give exactly one message id (run "smtpgw queue show -h" for usage)`},
		{[]string{"events", "--subaccount", "-3"}, `invalid value "-3" for flag -subaccount`},
		{[]string{"domains", "show"}, `smtpgw: domains show: give exactly one domain`},
		{[]string{"webhooks", "list", "extra"}, `smtpgw: webhooks list: unexpected argument "extra"`},
	} {
		code, _, errs := c.run(tc.args...)
		if code != 2 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, tc.want) {
			t.Errorf("smtpgw %s: exit %d, stderr %q; want exit 2 and one line with %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
	}
	if out := c.must("queue", "stats"); !strings.Contains(out, `HELD: relay.mode is "hold"`) {
		t.Errorf("queue stats on hold does not say so:\n%s", out)
	}
}

// TestAdminSaysWhichStore: an admin command names the store it opened on
// stderr, and says loudly when it created a new one.
func TestAdminSaysWhichStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := cli{t: t, environ: []string{"SMTPGW_DATA_DIR=" + dir}}
	db := dir + "/smtpgw.db"
	code, _, errs := c.run("keys", "list")
	if code != 0 || !strings.Contains(errs, "CREATED A NEW, EMPTY STORE: SQLite "+db) || strings.Count(errs, "\n") != 1 {
		t.Errorf("first keys list: exit %d, stderr %q; want one line saying it created %s", code, errs, db)
	}
	code, _, errs = c.run("queue", "stats")
	if code != 0 || errs != "smtpgw: store: SQLite "+db+" (no configuration file: defaults and SMTPGW_* variables)\n" {
		t.Errorf("second command: exit %d, stderr %q; want the store it opened", code, errs)
	}
}
