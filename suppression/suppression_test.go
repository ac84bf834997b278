package suppression

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

func TestServiceAndChecker(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		c := NewChecker(st, time.Hour) // only eviction can make a change visible
		s := New(st, c)
		other := NewChecker(st, 50*time.Millisecond)

		addrs := []string{"Gone@Example.com", "tx@example.com", "master@example.com", "ok@example.com"}
		got, err := c.Lookup(ctx, 7, addrs)
		if err != nil || got[0]|got[1]|got[2]|got[3] != 0 {
			t.Fatalf("empty list: %v, %v", got, err)
		}
		if _, err := other.Lookup(ctx, 7, addrs); err != nil {
			t.Fatal(err)
		}
		if err := s.Upsert(ctx, 7, []Entry{
			{Recipient: "gone@example.com", Type: store.SuppressTransactional},
			{Recipient: "GONE@example.com", Type: store.SuppressNonTransactional, Description: "asked"},
			{Recipient: "<tx@example.com>", Type: store.SuppressTransactional},
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Upsert(ctx, 0, []Entry{{Recipient: "master@example.com", Type: store.SuppressNonTransactional}}); err != nil {
			t.Fatal(err)
		}
		want := []Types{Both, Transactional, NonTransactional, 0}
		got, err = c.Lookup(ctx, 7, addrs)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("after upsert (evicted): %v, %v; want %v", got, err, want)
		}
		// Another process sees it after its TTL.
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, err = other.Lookup(ctx, 7, addrs)
			if err == nil && fmt.Sprint(got) == fmt.Sprint(want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("other checker: %v, %v; want %v", got, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Subaccount 7's list does not apply to subaccount 8; the master's does.
		if got, _ := c.Lookup(ctx, 8, addrs); fmt.Sprint(got) != fmt.Sprint([]Types{0, 0, NonTransactional, 0}) {
			t.Errorf("subaccount 8: %v", got)
		}
		if !Both.For(true) || !Both.For(false) || Transactional.For(false) || !NonTransactional.For(false) {
			t.Error("Types.For")
		}

		seven, eight := int64(7), int64(8)
		entries, err := s.Get(ctx, &seven, "gone@EXAMPLE.com")
		if err != nil || len(entries) != 2 || entries[0].Source != store.SourceManual {
			t.Errorf("Get = %+v, %v", entries, err)
		}
		if _, err := s.Get(ctx, &eight, "gone@example.com"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get outside the scope: %v", err)
		}
		if err := s.Delete(ctx, 7, "gone@example.com", store.SuppressTransactional); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Lookup(ctx, 7, addrs[:1]); got[0] != NonTransactional {
			t.Errorf("after deleting one type: %v", got)
		}
		if err := s.Delete(ctx, 7, "gone@example.com", ""); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, 7, "gone@example.com", ""); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second delete: %v", err)
		}
		if err := s.AddHardBounce(ctx, 7, "Dead@Example.com", "550 5.1.1 <dead@example.com>: user unknown"); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Lookup(ctx, 7, []string{"dead@example.com"}); got[0] != Both {
			t.Errorf("hard bounce: %v", got)
		}
		b, _ := s.Get(ctx, nil, "dead@example.com")
		if len(b) != 2 || b[0].Source != store.SourceBounce || !strings.Contains(b[0].Description, "user unknown") {
			t.Errorf("hard bounce entries: %+v", b)
		}

		for _, tc := range []struct {
			entries []Entry
			field   string
		}{
			{nil, "recipients"},
			{[]Entry{{Recipient: "nope", Type: store.SuppressTransactional}}, "recipient"},
			{[]Entry{{Recipient: "a@b.c", Type: "both"}}, "type"},
			{[]Entry{{Recipient: "a@b.c", Type: store.SuppressTransactional}, {Recipient: "a@b.c"}}, "recipients[1].type"},
			{[]Entry{{Recipient: "a@b.c", Type: store.SuppressTransactional, Description: strings.Repeat("x", MaxDescriptionLen+1)}}, "description"},
		} {
			var pe *ParamError
			if err := s.Upsert(ctx, 0, tc.entries); !errors.As(err, &pe) || pe.Field != tc.field || !errors.Is(err, ErrInvalid) {
				t.Errorf("Upsert(%+v) = %v; want a refusal of %s", tc.entries, err, tc.field)
			}
		}
	})
}

func TestSearchPages(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		s := New(st, nil)
		var batch []Entry
		for i := range 7 {
			batch = append(batch, Entry{Recipient: fmt.Sprintf("u%d@example.com", i), Type: store.SuppressNonTransactional})
		}
		if err := s.Upsert(ctx, 3, batch); err != nil {
			t.Fatal(err)
		}
		if err := s.Upsert(ctx, 0, []Entry{{Recipient: "x@example.org", Type: store.SuppressTransactional}}); err != nil {
			t.Fatal(err)
		}
		sub := int64(3)
		var seen []string
		q := Query{Subaccount: &sub, PerPage: 3, Cursor: "initial"}
		for pages := 0; ; pages++ {
			p, err := s.Search(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if p.TotalCount != 7 || pages > 3 {
				t.Fatalf("page %d: total %d", pages, p.TotalCount)
			}
			for _, r := range p.Results {
				seen = append(seen, r.Recipient)
			}
			if p.NextCursor == "" {
				break
			}
			q.Cursor = p.NextCursor
		}
		if len(seen) != 7 || seen[0] != "u0@example.com" || seen[6] != "u6@example.com" {
			t.Errorf("pages gave %v", seen)
		}
		if p, err := s.Search(ctx, Query{Types: []string{store.SuppressTransactional}}); err != nil || p.TotalCount != 1 || p.NextCursor != "" {
			t.Errorf("types filter: %+v, %v", p, err)
		}
		for _, q := range []Query{{PerPage: MaxPerPage + 1}, {PerPage: -1}, {Cursor: "!!"}, {Types: []string{"x"}}} {
			if _, err := s.Search(ctx, q); !errors.Is(err, ErrInvalid) {
				t.Errorf("Search(%+v) = %v; want refused", q, err)
			}
		}
	})
}

// BenchmarkLookup measures the RCPT-time check: a recipient whose answer
// is cached (the common case within the TTL), and one that goes to the
// store (SQLite), which the cache spares later RCPTs.
func BenchmarkLookup(b *testing.B) {
	st := storetest.Open(b, "sqlite")
	ctx := context.Background()
	var batch []store.Suppression
	for i := range 10000 {
		batch = append(batch, store.Suppression{Recipient: fmt.Sprintf("s%d@example.com", i), Type: store.SuppressNonTransactional, Source: store.SourceManual})
	}
	if err := st.UpsertSuppressions(ctx, batch); err != nil {
		b.Fatal(err)
	}
	b.Run("cached", func(b *testing.B) {
		c := NewChecker(st, time.Hour)
		addr := []string{"someone@example.net"}
		if _, err := c.Lookup(ctx, 0, addr); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Lookup(ctx, 0, addr); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("store", func(b *testing.B) {
		c := NewChecker(st, -1)
		addr := []string{"someone@example.net"}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Lookup(ctx, 7, addr); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("store_batch_of_50", func(b *testing.B) {
		c := NewChecker(st, -1)
		addrs := make([]string, 50)
		for i := range addrs {
			addrs[i] = fmt.Sprintf("s%d@example.com", i*7)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Lookup(ctx, 7, addrs); err != nil {
				b.Fatal(err)
			}
		}
	})
}
