package suppression

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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

// BenchmarkLookup measures the RCPT-time check with 10,000 entries: a
// recipient whose answer is cached, recipients never seen before answered
// from the snapshot of the lists (both the common case), and one that goes
// to the store (SQLite: no cache, or lists past SnapshotMax).
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
	b.Run("snapshot-new-recipients", func(b *testing.B) {
		c := NewChecker(st, time.Hour)
		addrs := make([][]string, 1024)
		for i := range addrs {
			addrs[i] = []string{fmt.Sprintf("new%d@example.net", i)}
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := c.Lookup(ctx, 0, addrs[i%len(addrs)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
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

// countingStore is a real store that counts the suppression reads the
// Checker makes.
type countingStore struct {
	store.Store
	mu               sync.Mutex
	lookups, digests int
	loads            int
}

func (s *countingStore) SuppressionsFor(ctx context.Context, subs []int64, rcpts []string) ([]store.Suppression, error) {
	s.mu.Lock()
	s.lookups++
	s.mu.Unlock()
	return s.Store.SuppressionsFor(ctx, subs, rcpts)
}

func (s *countingStore) SuppressionsDigest(ctx context.Context) (store.SuppressionDigest, error) {
	s.mu.Lock()
	s.digests++
	s.mu.Unlock()
	return s.Store.SuppressionsDigest(ctx)
}

func (s *countingStore) AllSuppressions(ctx context.Context, max int) ([]store.Suppression, store.SuppressionDigest, error) {
	s.mu.Lock()
	s.loads++
	s.mu.Unlock()
	return s.Store.AllSuppressions(ctx, max)
}

func (s *countingStore) counts() (lookups, digests, loads int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookups, s.digests, s.loads
}

// TestCheckerSnapshot: small lists are held whole, so recipients never
// seen before cost no query and the lists are read again only when their
// digest changes; lists past SnapshotMax are looked up per recipient.
func TestCheckerSnapshot(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		if err := st.UpsertSuppressions(ctx, []store.Suppression{
			{Recipient: "a@example.com", Type: store.SuppressTransactional, Source: store.SourceManual},
			{Subaccount: 3, Recipient: "b@example.com", Type: store.SuppressNonTransactional, Source: store.SourceManual},
		}); err != nil {
			t.Fatal(err)
		}
		cs := &countingStore{Store: st}
		c := NewChecker(cs, 30*time.Millisecond)
		for i := range 50 {
			got, err := c.Lookup(ctx, 3, []string{fmt.Sprintf("new%d@example.com", i), "A@example.com", "b@EXAMPLE.com"})
			if err != nil || fmt.Sprint(got) != fmt.Sprint([]Types{0, Transactional, NonTransactional}) {
				t.Fatalf("lookup %d: %v, %v", i, got, err)
			}
		}
		if got, _ := c.Lookup(ctx, 4, []string{"b@example.com"}); got[0] != 0 {
			t.Errorf("subaccount 3's entry applied to 4: %v", got)
		}
		if l, _, loads := cs.counts(); l != 0 || loads != 1 {
			t.Errorf("51 lookups made %d store lookups and %d loads, want 0 and 1", l, loads)
		}
		// Unchanged lists: the digest is asked again after ttl, the lists
		// are not read again.
		time.Sleep(40 * time.Millisecond)
		if _, err := c.Lookup(ctx, 0, []string{"x@example.com"}); err != nil {
			t.Fatal(err)
		}
		if _, digests, loads := cs.counts(); digests < 2 || loads != 1 {
			t.Errorf("after ttl: %d digests and %d loads, want at least 2 and still 1", digests, loads)
		}
		// A change made elsewhere (no Evict here) is seen after ttl.
		if err := st.UpsertSuppressions(ctx, []store.Suppression{
			{Recipient: "x@example.com", Type: store.SuppressNonTransactional, Source: store.SourceBounce},
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(40 * time.Millisecond)
		if got, err := c.Lookup(ctx, 0, []string{"x@example.com"}); err != nil || got[0] != NonTransactional {
			t.Errorf("after a change elsewhere and ttl: %v, %v", got, err)
		}
		if _, _, loads := cs.counts(); loads != 2 {
			t.Errorf("after a change: %d loads, want 2", loads)
		}

		// A change made here (Evict after it) shows at the next lookup,
		// from the store, without reading the lists again; the others are
		// still answered from the snapshot.
		here := &countingStore{Store: st}
		hc := NewChecker(here, time.Hour)
		if _, err := hc.Lookup(ctx, 0, []string{"y@example.com"}); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := st.UpsertSuppressions(ctx, []store.Suppression{
				{Recipient: "y@example.com", Type: store.SuppressTransactional, Source: store.SourceManual},
			}); err != nil {
				t.Fatal(err)
			}
			hc.Evict("Y@example.com")
		}
		if got, err := hc.Lookup(ctx, 0, []string{"y@example.com", "a@example.com"}); err != nil ||
			fmt.Sprint(got) != fmt.Sprint([]Types{Transactional, Transactional}) {
			t.Errorf("after a change here: %v, %v", got, err)
		}
		if l, _, loads := here.counts(); l != 1 || loads != 1 {
			t.Errorf("three evictions then a lookup: %d store lookups and %d loads, want 1 and 1", l, loads)
		}

		// The next snapshot, read after the eviction, answers for the
		// evicted recipient again.
		short := &countingStore{Store: st}
		sc := NewChecker(short, 30*time.Millisecond)
		if _, err := sc.Lookup(ctx, 0, []string{"z@example.com"}); err != nil {
			t.Fatal(err)
		}
		sc.Evict("z@example.com")
		if _, err := sc.Lookup(ctx, 0, []string{"z@example.com"}); err != nil {
			t.Fatal(err)
		}
		// (A slow machine may have refreshed already: then it asked the
		// store nothing; either way it asks nothing from here on.)
		before, _, _ := short.counts()
		time.Sleep(40 * time.Millisecond)
		for range 2 {
			if _, err := sc.Lookup(ctx, 0, []string{"z@example.com"}); err != nil {
				t.Fatal(err)
			}
		}
		if l, _, _ := short.counts(); l != before || before > 1 {
			t.Errorf("evicted, then a refresh: %d store lookups before it and %d after, want at most 1 and no more", before, l)
		}

		// Past SnapshotMax: one lookup per recipient not cached.
		big := &countingStore{Store: st}
		bc := NewChecker(big, time.Hour)
		bc.SnapshotMax = 1
		for _, a := range []string{"a@example.com", "n1@example.com", "n2@example.com"} {
			if _, err := bc.Lookup(ctx, 0, []string{a}); err != nil {
				t.Fatal(err)
			}
		}
		if got, _ := bc.Lookup(ctx, 0, []string{"a@example.com"}); got[0] != Transactional {
			t.Errorf("big lists: a@example.com = %v, want Transactional", got)
		}
		if l, _, loads := big.counts(); l != 3 || loads != 0 {
			t.Errorf("big lists: %d lookups and %d loads, want 3 (the fourth cached) and 0", l, loads)
		}
	})
}
