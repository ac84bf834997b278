package api

import (
	"encoding/json"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// fieldNames marshals v and returns its top-level JSON field names, sorted.
func fieldNames(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	return slices.Sorted(maps.Keys(m))
}

// The field names are SparkPost's (and the CLI's): scripts depend on them.
func TestJSONShapes(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	k := &store.Key{ID: "0123456789abcdef", Label: "l", Grants: []string{"smtp/inject"}, ShortKey: "abcd",
		Subaccount: 3, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		CreatedAt: at, UpdatedAt: at, LastUsedAt: at}
	if got, want := fieldNames(t, NewKey(k)), []string{"created_at", "grants", "id", "label", "last_used",
		"short_key", "subaccount_id", "updated_at", "valid_ips"}; !slices.Equal(got, want) {
		t.Errorf("key fields = %v, want %v", got, want)
	}
	// A master key without allowed IPs, never used: [] rather than null,
	// and no subaccount_id or last_used.
	bare := NewKey(&store.Key{ID: "x", CreatedAt: at, UpdatedAt: at})
	b, _ := json.Marshal(bare)
	if string(b) != `{"id":"x","label":"","grants":[],"valid_ips":[],"short_key":"","created_at":"2026-11-23T12:00:00Z","updated_at":"2026-11-23T12:00:00Z"}` {
		t.Errorf("bare key = %s", b)
	}

	d := &store.Domain{Name: "example.com", Selector: "s", Algorithm: "ed25519", PublicKey: "cHVi", CreatedAt: at}
	if got, want := fieldNames(t, NewDomain(d)), []string{"created_at", "dkim", "dkim_algorithm", "dkim_record_name",
		"dkim_record_value", "dkim_selector", "domain", "shared_with_subaccounts"}; !slices.Equal(got, want) {
		t.Errorf("domain fields = %v, want %v", got, want)
	}
	if j := NewDomain(d); j.DNSName != "s._domainkey.example.com" || j.DNSValue != "v=DKIM1; k=ed25519; p=cHVi" {
		t.Errorf("domain record = %q %q", j.DNSName, j.DNSValue)
	}

	ev := store.Event{ID: 42, Type: "delivery", Time: at, MessageID: "m", KeyID: "k", Recipient: "r@example.net",
		Metadata: json.RawMessage(`{"a":1}`), Tags: []string{"t"}, Reply: "250 ok"}
	if got, want := fieldNames(t, NewEvent(ev)), []string{"api_key_id", "campaign_id", "delv_method", "event_id", "message_id",
		"num_retries", "queue_time", "raw_reason", "rcpt_meta", "rcpt_tags", "rcpt_to", "subaccount_id", "timestamp", "type"}; !slices.Equal(got, want) {
		t.Errorf("event fields = %v, want %v", got, want)
	}
	b, _ = json.Marshal(NewEvent(store.Event{ID: 42, Type: "injection", Time: at}))
	if string(b) != `{"type":"injection","timestamp":"2026-11-23T12:00:00Z","event_id":"42","message_id":"","api_key_id":"","subaccount_id":0,"rcpt_to":"","campaign_id":"","raw_reason":"","recv_method":"esmtp"}` {
		t.Errorf("bare event = %s", b)
	}
}

func TestNormalizeDomain(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"example.com": "example.com", " Example.COM. ": "example.com", "a-b.c1.example": "a-b.c1.example",
		"xn--bcher-kva.example": "xn--bcher-kva.example",
	} {
		if got, err := NormalizeDomain(in); err != nil || got != want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "localhost", "a..b", "-a.example", "a-.example", "bücher.example",
		"under_score.example", "a.example/x", string(make([]byte, 254))} {
		if got, err := NormalizeDomain(in); err == nil {
			t.Errorf("NormalizeDomain(%q) = %q, want an error", in, got)
		}
	}
}
