package auth

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkVerify measures one successful verification of a key restricted
// to a CIDR prefix, from the cache (cache-hit) and from the store with the
// cache disabled (cache-miss), on both backends. Run with
// go test -run XXX -bench Verify -benchtime 2000x ./auth/
func BenchmarkVerify(b *testing.B) {
	for _, mode := range []struct {
		name string
		ttl  time.Duration
	}{
		{"cache-hit", time.Hour},
		{"cache-miss", -1},
	} {
		for _, be := range backends {
			b.Run(mode.name+"/"+be.name, func(b *testing.B) {
				ctx := context.Background()
				st := be.open(b)
				v := newTestVerifier(b, st, mode.ttl)
				key, _ := mustCreate(b, NewManager(st, v), CreateParams{
					Grants:     []string{GrantSMTPInject, GrantMetricsView},
					AllowedIPs: []string{"192.0.2.0/24"},
				})
				client := netip.MustParseAddr("192.0.2.9")
				if _, err := v.Verify(ctx, key, client); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := v.Verify(ctx, key, client); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
