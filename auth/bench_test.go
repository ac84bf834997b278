package auth

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
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
		for _, be := range storetest.Backends {
			b.Run(mode.name+"/"+be, func(b *testing.B) {
				ctx := context.Background()
				st := storetest.Open(b, be)
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

// BenchmarkVerifyRefused compares the cost of refusing an unknown key with
// that of refusing a known key for its client address, which Verify keeps
// alike so that timing does not tell whether a key exists.
func BenchmarkVerifyRefused(b *testing.B) {
	for _, mode := range []struct {
		name string
		ttl  time.Duration
	}{
		{"cache-hit", time.Hour},
		{"cache-miss", -1},
	} {
		for _, be := range storetest.Backends {
			b.Run(mode.name+"/"+be, func(b *testing.B) {
				ctx := context.Background()
				st := storetest.Open(b, be)
				v := newTestVerifier(b, st, mode.ttl)
				known, _ := mustCreate(b, NewManager(st, v), CreateParams{
					Grants:     []string{GrantSMTPInject},
					AllowedIPs: []string{"192.0.2.0/24"},
				})
				unknown, err := GenerateKey()
				if err != nil {
					b.Fatal(err)
				}
				client := netip.MustParseAddr("198.51.100.9")
				for _, c := range []struct {
					name string
					key  string
					want error
				}{
					{"unknown", unknown, ErrUnknownKey},
					{"ip-not-allowed", known, ErrIPNotAllowed},
				} {
					b.Run(c.name, func(b *testing.B) {
						for i := 0; i < b.N; i++ {
							if _, err := v.Verify(ctx, c.key, client); !errors.Is(err, c.want) {
								b.Fatalf("%v, want %v", err, c.want)
							}
						}
					})
				}
			})
		}
	}
}
