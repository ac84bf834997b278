package limits

import (
	"context"
	"testing"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// BenchmarkReserve is the cost limits add to MAIL: for a key without
// limits (two cache lookups) and for a key and subaccount with limits
// (local quota, with a store reservation every chunk of 100 messages).
func BenchmarkReserve(b *testing.B) {
	for _, backend := range storetest.Backends {
		b.Run(backend, func(b *testing.B) {
			st := storetest.Open(b, backend)
			ctx := context.Background()
			if err := st.SetLimits(ctx, KeyScope("limited"), store.Limits{PerHour: 1 << 40, PerDay: 1 << 40}); err != nil {
				b.Fatal(err)
			}
			if err := st.SetLimits(ctx, SubaccountScope(3), store.Limits{PerMonth: 1 << 40}); err != nil {
				b.Fatal(err)
			}
			c := New(st, Config{})
			b.Cleanup(c.Close)
			b.Run("unlimited", func(b *testing.B) {
				for b.Loop() {
					if _, err := c.Reserve(ctx, "free", 0); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("limited", func(b *testing.B) {
				for b.Loop() {
					if _, err := c.Reserve(ctx, "limited", 3); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
