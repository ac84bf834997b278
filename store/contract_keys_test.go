package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// bulkKeys inserts n active keys in one transaction, straight into the
// table (CreateKey commits each: too slow for the sizes paging needs). Key
// i is made by mk(i); keys with the same CreatedAt test the id tiebreak.
func bulkKeys(t testing.TB, s Store, n int, mk func(i int) *Key) []*Key {
	t.Helper()
	ctx := context.Background()
	ks := make([]*Key, n)
	for i := range ks {
		k := mk(i)
		if k.ID == "" {
			k.ID = NewKeyID()
		}
		if k.Hash == nil {
			k.Hash = hashOf(fmt.Sprintf("bulk-%s", k.ID))
		}
		k.CreatedAt = utc(k.CreatedAt)
		k.UpdatedAt = k.CreatedAt
		ks[i] = k
	}
	var err error
	switch st := s.(type) {
	case *sqliteStore:
		err = st.inTx(ctx, "bulk keys", func(tx *sql.Tx) error {
			ins, err := tx.PrepareContext(ctx, `INSERT INTO api_keys (`+sqliteKeyCols+`)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, '')`)
			if err != nil {
				return err
			}
			defer ins.Close()
			for _, k := range ks {
				g, _ := jsonStrings(k.Grants)
				if _, err := ins.ExecContext(ctx, k.ID, k.Label, g, k.ShortKey, k.Hash, k.Subaccount, "[]",
					us(k.CreatedAt), us(k.UpdatedAt)); err != nil {
					return err
				}
			}
			return nil
		})
	case *pgStore:
		rows := make([][]any, len(ks))
		for i, k := range ks {
			rows[i] = []any{k.ID, k.Label, nonNil(k.Grants), k.ShortKey, k.Hash, k.Subaccount, []string{},
				k.CreatedAt, k.UpdatedAt}
		}
		_, err = st.pool.CopyFrom(ctx, pgx.Identifier{"api_keys"},
			[]string{"id", "label", "grants", "short_key", "hash", "subaccount", "allowed_ips", "created_at", "updated_at"},
			pgx.CopyFromRows(rows))
	default:
		t.Fatalf("bulkKeys: unknown store %T", s)
	}
	if err != nil {
		t.Fatalf("bulk insert %d keys: %v", n, err)
	}
	return ks
}

// walkKeys lists every page of f and checks no page is over its size.
func walkKeys(t *testing.T, s Store, f KeyFilter) []*Key {
	t.Helper()
	var all []*Key
	seen := map[string]bool{}
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatal("ListKeys: the cursor never ends")
		}
		page, next, err := s.ListKeys(ctxT(t), f)
		if err != nil {
			t.Fatalf("ListKeys(%+v): %v", f, err)
		}
		if len(page) > f.pageSize() {
			t.Fatalf("ListKeys page of %d keys, asked for %d", len(page), f.pageSize())
		}
		if next != "" && len(page) != f.pageSize() {
			t.Fatalf("ListKeys: short page of %d (limit %d) with a next cursor", len(page), f.pageSize())
		}
		for _, k := range page {
			if seen[k.ID] {
				t.Fatalf("ListKeys: key %s on two pages", k.ID)
			}
			seen[k.ID] = true
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		f.Cursor = next
	}
}

// TestListKeysPages lists thousands of keys page by page, with and without
// filters, and checks every page is bounded, the order is creation then
// id, and each key comes exactly once.
func TestListKeysPages(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		const n = 2500
		base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
		grantsOf := [][]string{{"smtp/inject"}, {"smtp/inject", "message_events/view"}, {"api_keys/manage"}}
		keys := bulkKeys(t, e.s, n, func(i int) *Key {
			return &Key{
				// Ten keys share each creation time: the id breaks the tie.
				CreatedAt:  base.Add(time.Duration(i/10) * time.Second),
				Label:      fmt.Sprintf("App %d", i),
				Grants:     grantsOf[i%3],
				Subaccount: int64(i % 4),
				ShortKey:   "abcd",
			}
		})
		// A revoked key is never listed.
		if err := e.s.RevokeKey(ctxT(t), keys[7].ID); err != nil {
			t.Fatal(err)
		}
		want := func(keep func(i int, k *Key) bool) []string {
			var ids []*Key
			for i, k := range keys {
				if i != 7 && keep(i, k) {
					ids = append(ids, k)
				}
			}
			// Listing order: creation time, then id.
			sorted := make([]string, 0, len(ids))
			for len(ids) > 0 {
				best := 0
				for j, k := range ids {
					b := ids[best]
					if k.CreatedAt.Before(b.CreatedAt) || k.CreatedAt.Equal(b.CreatedAt) && k.ID < b.ID {
						best = j
					}
				}
				sorted = append(sorted, ids[best].ID)
				ids = append(ids[:best], ids[best+1:]...)
			}
			return sorted
		}
		idsOf := func(ks []*Key) []string {
			out := make([]string, len(ks))
			for i, k := range ks {
				out[i] = k.ID
			}
			return out
		}
		sub2 := int64(2)
		cases := []struct {
			name string
			f    KeyFilter
			keep func(i int, k *Key) bool
		}{
			{"all", KeyFilter{Limit: 100}, func(int, *Key) bool { return true }},
			{"all, default page", KeyFilter{}, func(int, *Key) bool { return true }},
			{"label", KeyFilter{Label: "app 12", Limit: 7}, func(_ int, k *Key) bool { return strings.Contains(k.Label, "App 12") }},
			{"subaccount", KeyFilter{Subaccount: &sub2, Limit: 50}, func(i int, _ *Key) bool { return i%4 == 2 }},
			{"grant", KeyFilter{Grant: "message_events/view", Limit: 64}, func(i int, _ *Key) bool { return i%3 == 1 }},
			{"all filters", KeyFilter{Grant: "smtp/inject", Subaccount: &sub2, Label: "1", Limit: 9}, func(i int, k *Key) bool {
				return i%4 == 2 && i%3 != 2 && strings.Contains(k.Label, "1")
			}},
			{"none match", KeyFilter{Label: "nothing like it"}, func(int, *Key) bool { return false }},
		}
		for _, c := range cases {
			got := idsOf(walkKeys(t, e.s, c.f))
			if w := want(c.keep); !reflect.DeepEqual(got, w) {
				t.Errorf("%s: listed %d keys, want %d (first %v, want %v)", c.name, len(got), len(w),
					got[:min(3, len(got))], w[:min(3, len(w))])
			}
		}
		// A page size over the maximum is lowered to it.
		page, next, err := e.s.ListKeys(ctxT(t), KeyFilter{Limit: MaxKeyPage + 5})
		if err != nil || len(page) != n-1 || next != "" {
			t.Errorf("ListKeys(Limit over max) = %d keys, next %q, %v", len(page), next, err)
		}
		for _, bad := range []string{"!!", "bm9jb2xvbg", "MTIz"} {
			if _, _, err := e.s.ListKeys(ctxT(t), KeyFilter{Cursor: bad}); !errors.Is(err, ErrBadCursor) {
				t.Errorf("cursor %q: %v, want ErrBadCursor", bad, err)
			}
		}
	})
}

// TestKeyExpiry stores, changes and clears a key's expiry time.
func TestKeyExpiry(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		exp := time.Date(2027, 1, 2, 3, 4, 5, 6000, time.UTC)
		k := &Key{Label: "exp", Hash: hashOf("exp"), Grants: []string{"smtp/inject"}, ExpiresAt: exp}
		if err := e.s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		got, err := e.s.GetKey(ctx, k.ID)
		if err != nil || !got.ExpiresAt.Equal(exp) || got.LastUsedIP.IsValid() {
			t.Fatalf("GetKey = %+v, %v: want expiry %v and no last-used address", got, err, exp)
		}
		if !got.Expired(exp) || got.Expired(exp.Add(-time.Microsecond)) {
			t.Errorf("Expired around %v wrong", exp)
		}
		got.ExpiresAt = exp.Add(time.Hour)
		if err := e.s.UpdateKey(ctx, got); err != nil {
			t.Fatal(err)
		}
		if g, _ := e.s.KeyByHash(ctx, k.Hash); !g.ExpiresAt.Equal(exp.Add(time.Hour)) {
			t.Errorf("after update: expiry %v, want %v", g.ExpiresAt, exp.Add(time.Hour))
		}
		got.ExpiresAt = time.Time{}
		if err := e.s.UpdateKey(ctx, got); err != nil {
			t.Fatal(err)
		}
		if g, _ := e.s.GetKey(ctx, k.ID); !g.ExpiresAt.IsZero() || g.Expired(time.Now().Add(1000*time.Hour)) {
			t.Errorf("after clearing: expiry %v, want none", g.ExpiresAt)
		}
	})
}

// TestLimits stores limits and checks that reservations from two store
// handles on one database (two nodes) never pass the ceiling together.
func TestLimits(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		key := LimitScope{Kind: LimitKindKey, ID: "0123456789abcdef"}
		sub := LimitScope{Kind: LimitKindSubaccount, ID: "7"}
		if l, err := e.s.GetLimits(ctx, key); err != nil || !l.IsZero() {
			t.Fatalf("GetLimits of nothing = %+v, %v", l, err)
		}
		kl := Limits{PerMinute: 5, PerHour: 100, PerMonth: 10000}
		if err := e.s.SetLimits(ctx, key, kl); err != nil {
			t.Fatal(err)
		}
		if err := e.s.SetLimits(ctx, sub, Limits{PerDay: 3}); err != nil {
			t.Fatal(err)
		}
		if err := e.s.SetLimits(ctx, sub, Limits{PerDay: 30}); err != nil { // replaces
			t.Fatal(err)
		}
		if l, err := e.s.GetLimits(ctx, key); err != nil || l != kl {
			t.Errorf("GetLimits = %+v, %v, want %+v", l, err, kl)
		}
		other := LimitScope{Kind: LimitKindKey, ID: "none"}
		m, err := e.s.LimitsOf(ctx, []LimitScope{key, sub, other})
		if err != nil || len(m) != 2 || m[key] != kl || m[sub] != (Limits{PerDay: 30}) {
			t.Errorf("LimitsOf = %+v, %v", m, err)
		}
		if m, err := e.s.LimitsOf(ctx, nil); err != nil || len(m) != 0 {
			t.Errorf("LimitsOf(nil) = %+v, %v", m, err)
		}
		if err := e.s.SetLimits(ctx, sub, Limits{}); err != nil {
			t.Fatal(err)
		}
		if l, err := e.s.GetLimits(ctx, sub); err != nil || !l.IsZero() {
			t.Errorf("GetLimits after clearing = %+v, %v", l, err)
		}

		// Two "nodes" reserve concurrently: the ceiling holds exactly.
		node2 := openStore(t, e.url, e.dir)
		start := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
		w := QuotaWindow{Unit: "h", Start: start, End: start.Add(time.Hour)}
		const ceiling = 50
		var (
			mu    sync.Mutex
			total int64
			wg    sync.WaitGroup
		)
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := e.s
				if i%2 == 1 {
					s = node2
				}
				for range 4 {
					got, err := s.ReserveQuota(ctx, key, w, 3, ceiling)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					total += got
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if total != ceiling {
			t.Errorf("reserved %d in all, want exactly the ceiling %d", total, ceiling)
		}
		w2 := QuotaWindow{Unit: "m", Start: start, End: start.Add(time.Minute)}
		if got, err := e.s.ReserveQuota(ctx, key, w2, 2, 5); err != nil || got != 2 {
			t.Errorf("ReserveQuota in another window = %d, %v, want 2", got, err)
		}
		used, err := node2.QuotaUsed(ctx, key, []QuotaWindow{w, w2, {Unit: "d", Start: start}})
		if err != nil || !reflect.DeepEqual(used, []int64{ceiling, 2, 0}) {
			t.Errorf("QuotaUsed = %v, %v, want [%d 2 0]", used, err, ceiling)
		}
		// Pruning drops the windows that ended before the cutoff only.
		n, err := e.s.PruneQuota(ctx, start.Add(30*time.Minute))
		if err != nil || n != 1 {
			t.Errorf("PruneQuota = %d, %v, want 1 (the minute window)", n, err)
		}
		if used, _ := e.s.QuotaUsed(ctx, key, []QuotaWindow{w, w2}); !reflect.DeepEqual(used, []int64{ceiling, 0}) {
			t.Errorf("after prune: QuotaUsed = %v, want [%d 0]", used, ceiling)
		}
	})
}

// BenchmarkListKeysPage reads one page of 100 keys from the middle of
// 100,000: the cost of a page must not grow with the number of keys.
func BenchmarkListKeysPage(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			e := openEnv(b, backend)
			base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
			keys := bulkKeys(b, e.s, 100_000, func(i int) *Key {
				return &Key{CreatedAt: base.Add(time.Duration(i) * time.Millisecond), Label: fmt.Sprintf("app %d", i),
					Grants: []string{"smtp/inject"}, Subaccount: int64(i % 100)}
			})
			cursor := encodeKeyCursor(keys[50_000])
			sub := int64(42)
			b.ResetTimer()
			for b.Loop() {
				if _, _, err := e.s.ListKeys(context.Background(), KeyFilter{Limit: 100, Cursor: cursor}); err != nil {
					b.Fatal(err)
				}
				if _, _, err := e.s.ListKeys(context.Background(), KeyFilter{Limit: 100, Subaccount: &sub, Cursor: cursor}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
