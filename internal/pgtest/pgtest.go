// Package pgtest gives tests a PostgreSQL schema of their own.
//
// URL creates a fresh schema on the server named by SMTPGW_TEST_DATABASE_URL
// (default postgres://postgres@127.0.0.1:5432/test), drops it when the test
// ends, and returns a URL whose connections see only that schema (its
// search_path). Tests then open the store on that URL and migrate it, so they
// run in parallel without seeing each other's rows.
//
// A server that does not answer fails the test, with how to start it: a
// skipped database test is a test that silently stopped testing.
//
// It does not import store: store's own tests use it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultURL is the server tests use when SMTPGW_TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test"

// EnvVar names the environment variable holding the test server's URL.
const EnvVar = "SMTPGW_TEST_DATABASE_URL"

// BaseURL returns the test server's URL (EnvVar, else DefaultURL).
func BaseURL() string {
	if u := os.Getenv(EnvVar); u != "" {
		return u
	}
	return DefaultURL
}

// URL creates a schema smtpgw_test_<random> for t, registers its removal
// with t.Cleanup, and returns a URL whose connections use only that schema.
func URL(t testing.TB) string {
	t.Helper()
	base := BaseURL()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: PostgreSQL at %s does not answer: %v\n"+
			"Start it with: pg_ctlcluster --skip-systemctl-redirect 15 main start\n"+
			"or point %s at a server.", redact(base), err, EnvVar)
	}
	defer func() {
		if err := conn.Close(context.Background()); err != nil {
			t.Errorf("pgtest: close connection: %v", err)
		}
	}()
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	schema := "smtpgw_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", schema, err)
	}
	t.Cleanup(func() { dropSchema(t, base, schema) })

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", EnvVar, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// dropSchema removes a test's schema and everything in it.
func dropSchema(t testing.TB, base, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Errorf("pgtest: drop schema %s: connect: %v", schema, err)
		return
	}
	if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
		t.Errorf("pgtest: drop schema %s: %v", schema, err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Errorf("pgtest: close connection: %v", err)
	}
}

// redact hides a password in a URL for messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}
