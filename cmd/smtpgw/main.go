// Command smtpgw is the SMTP injection gateway: `smtpgw serve` runs the
// submission listeners, the relay workers and the admin HTTP listener; the
// other subcommands administer API keys, sending domains, the queue and
// events directly in the store (there is no control socket).
//
// main only wires: configuration is loaded by package config and copied into
// each package's own Config, so no package imports config.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/smtpgw/smtpgw/audit"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit statuses (SPEC §6).
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError is a mistake in how the command was called: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{msg: fmt.Sprintf(format, a...)} }

// env is what a subcommand runs with, so tests can run the CLI in-process.
type env struct {
	stdout, stderr io.Writer
	environ        []string
}

const topUsage = `usage: smtpgw <command> [arguments]

commands:
  serve     run the gateway (SMTP submission, relay, admin HTTP)
  migrate   apply database migrations
  keys      create, list, show, update and delete API keys
  domains   add, list, show and delete sending domains (DKIM)
  subaccounts  create, list, show and update subaccounts
  suppressions add, list, show and delete suppression list entries
  queue     list, show, retry and delete queued messages; stats
  events    list message events
  webhooks  list, show and delete event webhooks
  audit     list the audit log of admin changes
  bench     measure injection throughput against a running gateway
  version   print the version

Every command takes --config FILE (default ./smtpgw.toml if present).
Run "smtpgw <command> -h" for its flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], env{stdout: os.Stdout, stderr: os.Stderr, environ: os.Environ()}))
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, e env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, topUsage)
		return exitUsage
	}
	// Changes made by admin commands are recorded as the CLI's (package
	// audit); serve's API requests carry their own actor.
	ctx = audit.WithActor(ctx, audit.CLIActor())
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = cmdServe(ctx, rest, e)
	case "migrate":
		err = cmdMigrate(ctx, rest, e)
	case "keys":
		err = cmdKeys(ctx, rest, e)
	case "domains":
		err = cmdDomains(ctx, rest, e)
	case "subaccounts":
		err = cmdSubaccounts(ctx, rest, e)
	case "suppressions":
		err = cmdSuppressions(ctx, rest, e)
	case "queue":
		err = cmdQueue(ctx, rest, e)
	case "events":
		err = cmdEvents(ctx, rest, e)
	case "webhooks":
		err = cmdWebhooks(ctx, rest, e)
	case "audit":
		err = cmdAudit(ctx, rest, e)
	case "bench":
		err = cmdBench(ctx, rest, e)
	case "version", "--version", "-version":
		fmt.Fprintf(e.stdout, "smtpgw %s\n", version)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, topUsage)
	default:
		err = usagef("unknown command %q (run \"smtpgw help\" for the list)", cmd)
	}
	return report(err, e, args[0])
}

// report prints err as one clear line and maps it to an exit status. A
// usage error's first line is printed with a pointer to cmd's -h, which
// shows the usage the rest of the error carries.
func report(err error, e env, cmd string) int {
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		msg, rest, more := strings.Cut(ue.msg, "\n")
		if more && strings.TrimSpace(rest) != "" {
			if strings.HasPrefix(cmd, "-") || cmd == "help" {
				cmd = ""
			}
			// "keys list: ..." points at "smtpgw keys list -h".
			if p, _, ok := strings.Cut(msg, ":"); ok && cmd != "" && strings.HasPrefix(p, cmd) && !strings.ContainsAny(p, "\"=") {
				cmd = p
			}
			msg += fmt.Sprintf(" (run \"%s -h\" for usage)", strings.TrimSpace("smtpgw "+cmd))
		}
		fmt.Fprintf(e.stderr, "smtpgw: %s\n", msg)
		return exitUsage
	default:
		// One line: drivers put newlines and tabs in their errors.
		msg := strings.Join(strings.Fields(strings.NewReplacer(":\n", ": ", "\n", "; ").Replace(err.Error())), " ")
		fmt.Fprintf(e.stderr, "smtpgw: %s\n", msg)
		return exitFail
	}
}
