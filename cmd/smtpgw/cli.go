package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/config"
	"github.com/smtpgw/smtpgw/store"
)

// errHelp reports that -h was asked for and the usage was printed.
var errHelp = errors.New("help requested")

// newFlags returns a flag set that neither prints nor exits on its own
// (parse reports errors), with the --config flag every command takes.
func newFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	cfgPath := fs.String("config", "", "configuration file (default ./smtpgw.toml if present)")
	return fs, cfgPath
}

// parse parses args into fs allowing flags before and after positional
// arguments ("keys update ID --label x"), and returns the positionals.
func parse(fs *flag.FlagSet, usage string, args []string, e env) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprintln(e.stdout, usage)
				fs.SetOutput(e.stdout)
				fs.PrintDefaults()
				return nil, errHelp
			}
			return nil, usagef("%s: %v\n%s", fs.Name(), err, usage)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// stringList is a repeatable string flag (--grant a --grant b); a value
// with commas counts as several.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// loadConfig loads the configuration file and environment.
func loadConfig(path string, e env) (*config.Config, error) {
	cfg, err := config.Load(path, e.environ)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// openStore loads the configuration, opens the store it names and applies
// pending migrations, so admin commands work on a fresh data directory.
// The store is wrapped by audit.Wrap: the changes the command makes are
// recorded as the CLI actor's that run puts in ctx.
func openStore(ctx context.Context, cfgPath string, e env) (*config.Config, store.Store, error) {
	cfg, err := loadConfig(cfgPath, e)
	if err != nil {
		return nil, nil, err
	}
	where, created := describeStore(cfg, cfgPath)
	st, err := openConfigured(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if created {
		fmt.Fprintf(e.stderr, "smtpgw: CREATED A NEW, EMPTY STORE: %s. If you meant an existing gateway's store, "+
			"run this command where that gateway runs or give its --config (or SMTPGW_DATA_DIR).\n", where)
	} else {
		fmt.Fprintf(e.stderr, "smtpgw: store: %s\n", where)
	}
	return cfg, audit.Wrap(st, slog.New(slog.NewTextHandler(e.stderr, nil))), nil
}

// describeStore says which store cfg names and where the configuration
// came from, for the one line admin commands print on stderr, and whether
// opening it will create a new SQLite database.
func describeStore(cfg *config.Config, cfgPath string) (string, bool) {
	src := "no configuration file: defaults and SMTPGW_* variables"
	switch {
	case cfgPath != "":
		src = "configuration " + cfgPath
	default:
		if _, err := os.Stat(config.DefaultPath); err == nil {
			src = "configuration ./" + config.DefaultPath
		}
	}
	if cfg.Database.URL != "" {
		return fmt.Sprintf("PostgreSQL %s (%s)", pgDisplay(cfg.Database.URL), src), false
	}
	path := filepath.Join(cfg.DataDir, store.DBFileName)
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	_, err := os.Stat(path)
	return fmt.Sprintf("SQLite %s (%s)", path, src), errors.Is(err, fs.ErrNotExist)
}

// pgDisplay shows a PostgreSQL url without its password or parameters.
func pgDisplay(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	out := u.Scheme + "://"
	if u.User != nil {
		out += u.User.Username() + "@"
	}
	return out + u.Host + u.Path
}

// openConfigured opens and migrates the store cfg names.
func openConfigured(ctx context.Context, cfg *config.Config) (store.Store, error) {
	st, err := store.Open(ctx, cfg.Database.URL, cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w%s", err, storeHint(cfg))
	}
	if err := st.Migrate(ctx); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("migrate store: %w%s", err, storeHint(cfg))
	}
	return st, nil
}

// storeHint tells the admin how to fix an unreachable store.
func storeHint(cfg *config.Config) string {
	if cfg.Database.URL == "" {
		return fmt.Sprintf(" (check that data_dir %q is writable, or set SMTPGW_DATA_DIR)", cfg.DataDir)
	}
	return " (check that PostgreSQL is running and database.url / SMTPGW_DATABASE_URL is right)"
}

// closeStore closes st, keeping the first error.
func closeStore(st store.Store, err *error) {
	if cerr := st.Close(); cerr != nil && *err == nil {
		*err = fmt.Errorf("close store: %w", cerr)
	}
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// notFound turns store.ErrNotFound into a message that says what to do.
func notFound(err error, what, id, listCmd string) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no %s with id %q (run \"%s\" to see them)", what, id, listCmd)
	}
	return err
}

// subaccountFlag is an optional --subaccount N filter: unset means every
// account, so -h shows no "(default -1)".
type subaccountFlag struct {
	set bool
	n   int64
}

func (f *subaccountFlag) String() string {
	if f == nil || !f.set {
		return ""
	}
	return strconv.FormatInt(f.n, 10)
}

func (f *subaccountFlag) Set(v string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("must be 0 (master account) or a subaccount id, not %q", v)
	}
	f.set, f.n = true, n
	return nil
}

// ptr returns the subaccount as a filter: nil when the flag was not given.
func (f *subaccountFlag) ptr() *int64 {
	if !f.set {
		return nil
	}
	n := f.n
	return &n
}
