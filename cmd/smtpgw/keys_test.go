package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/smtpgw/smtpgw/internal/pgtest"
)

// cli runs the CLI in-process with the given environment.
type cli struct {
	t       *testing.T
	environ []string
}

func (c cli) run(args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, env{stdout: &out, stderr: &errb, environ: c.environ})
	return code, out.String(), errb.String()
}

// must runs a command that has to succeed and returns its stdout.
func (c cli) must(args ...string) string {
	c.t.Helper()
	code, out, errs := c.run(args...)
	if code != 0 {
		c.t.Fatalf("smtpgw %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// backends returns a CLI environment per store: SQLite in a temporary data
// directory, and PostgreSQL in a schema of its own.
func backends(t *testing.T) map[string]func(t *testing.T) (cli, string) {
	return map[string]func(t *testing.T) (cli, string){
		"sqlite": func(t *testing.T) (cli, string) {
			dir := t.TempDir()
			return cli{t: t, environ: []string{"SMTPGW_DATA_DIR=" + dir}}, dir
		},
		"postgres": func(t *testing.T) (cli, string) {
			url := pgtest.URL(t)
			return cli{t: t, environ: []string{"SMTPGW_DATA_DIR=" + t.TempDir(), "SMTPGW_DATABASE_URL=" + url}}, url
		},
	}
}

var keyLine = regexp.MustCompile(`(?m)^\s+([0-9a-f]{40})$`)

func TestKeysLifecycle(t *testing.T) {
	t.Parallel()
	for name, setup := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, where := setup(t)
			out := c.must("keys", "create", "--label", "app", "--grant", "smtp/inject",
				"--allowed-ip", "10.0.0.0/8", "--allowed-ip", "2001:db8::/32")
			m := keyLine.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("create printed no 40-hex key:\n%s", out)
			}
			key := m[1]
			if !strings.Contains(out, "Copy this key now") {
				t.Errorf("create does not tell the admin to copy the key now:\n%s", out)
			}

			// list shows label, grants, short key and IPs, never the key.
			list := c.must("keys", "list")
			for _, want := range []string{"app", "smtp/inject", key[:4], "10.0.0.0/8", "2001:db8::/32"} {
				if !strings.Contains(list, want) {
					t.Errorf("keys list lacks %q:\n%s", want, list)
				}
			}
			var listed struct {
				Results []keyJSON `json:"results"`
			}
			jsonOut := c.must("keys", "list", "--json")
			if err := json.Unmarshal([]byte(jsonOut), &listed); err != nil || len(listed.Results) != 1 {
				t.Fatalf("keys list --json: %v\n%s", err, jsonOut)
			}
			id := listed.Results[0].ID
			if listed.Results[0].ShortKey != key[:4] || listed.Results[0].Key != "" {
				t.Errorf("listed key = %+v", listed.Results[0])
			}
			show := c.must("keys", "show", id)
			update := c.must("keys", "update", id, "--label", "renamed", "--grant", "smtp/inject", "--grant", "templates/view", "--any-ip")
			if !strings.Contains(update, "renamed") || !strings.Contains(update, "templates/view*") || !strings.Contains(update, "any") {
				t.Errorf("update output:\n%s", update)
			}
			for _, o := range []string{list, jsonOut, show, update} {
				if strings.Contains(o, key) {
					t.Fatalf("the key was printed again after create:\n%s", o)
				}
			}
			assertKeyNotStored(t, name, where, key)

			c.must("keys", "delete", id)
			if out := c.must("keys", "list"); strings.Contains(out, id) {
				t.Errorf("deleted key still listed:\n%s", out)
			}
			code, _, errs := c.run("keys", "show", id)
			if code != 1 || !strings.Contains(errs, "no API key with id") {
				t.Errorf("show deleted key: exit %d, %q", code, errs)
			}
		})
	}
}

// assertKeyNotStored greps the raw SQLite files, or every PostgreSQL table
// of the schema, for the key.
func assertKeyNotStored(t *testing.T, backend, where, key string) {
	t.Helper()
	if backend == "sqlite" {
		files, _ := filepath.Glob(filepath.Join(where, "*"))
		if len(files) == 0 {
			t.Fatalf("no files in data dir %s", where)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(key)) {
				t.Fatalf("the key is stored in clear in %s", f)
			}
		}
		return
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, where)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("list tables: %v (%d)", err, len(tables))
	}
	for _, tbl := range tables {
		var hits int
		q := `SELECT count(*) FROM ` + pgx.Identifier{tbl}.Sanitize() + ` t WHERE t::text LIKE '%' || $1 || '%'`
		if err := conn.QueryRow(ctx, q, key).Scan(&hits); err != nil {
			t.Fatal(err)
		}
		if hits > 0 {
			t.Fatalf("the key is stored in clear in table %s", tbl)
		}
	}
}

func TestCLIErrors(t *testing.T) {
	t.Parallel()
	c := cli{t: t, environ: []string{"SMTPGW_DATA_DIR=" + t.TempDir()}}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad grant", []string{"keys", "create", "--label", "x", "--grant", "smtp/injekt"}, 1, "smtp/injekt"},
		{"bad cidr", []string{"keys", "create", "--label", "x", "--grant", "smtp/inject", "--allowed-ip", "10.0.0.0/33"}, 1, "10.0.0.0/33"},
		{"unknown key id", []string{"keys", "show", "0123456789abcdef"}, 1, "no API key with id"},
		{"unknown key delete", []string{"keys", "delete", "0123456789abcdef"}, 1, "no API key with id"},
		{"missing label", []string{"keys", "create", "--grant", "smtp/inject"}, 2, "--label is required"},
		{"unknown flag", []string{"keys", "list", "--bogus"}, 2, "bogus"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"no command", nil, 2, "usage"},
		{"unknown queue message", []string{"queue", "show", "nope"}, 1, "no message with id"},
		{"bad state", []string{"queue", "list", "--state", "lost"}, 2, "--state must be one of"},
		{"bad domain", []string{"domains", "add", "not a domain"}, 2, "not a domain name"},
		{"bench without key", []string{"bench", "--addr", "127.0.0.1:1"}, 2, "no API key: put one in a file for --key-file FILE, or in the SMTPGW_KEY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := c.run(tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d (want %d), stderr %q (want it to contain %q)", code, tc.code, errs, tc.want)
			}
			// The line naming the store opened is not part of the error.
			errs = storeLine.ReplaceAllString(errs, "")
			if lines := strings.Count(strings.TrimSpace(errs), "\n"); tc.code == 1 && lines != 0 {
				t.Errorf("error is %d lines, want one:\n%s", lines+1, errs)
			}
		})
	}
}

func TestConfigErrorNamesKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "smtpgw.toml")
	if err := os.WriteFile(path, []byte("[smtp]\nidle_timeout = \"sixty\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := cli{t: t, environ: []string{"SMTPGW_DATA_DIR=" + dir}}
	code, _, errs := c.run("keys", "list", "--config", path)
	if code != 1 || !strings.Contains(errs, "idle_timeout") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	c := cli{t: t}
	if out := c.must("version"); !strings.HasPrefix(out, "smtpgw ") {
		t.Fatalf("version = %q", out)
	}
}
