package domains

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/internal/dnstest"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/relay"
	"github.com/smtpgw/smtpgw/store"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		newDomain := func(name string) *store.Domain {
			priv, pub, err := relay.GenerateDKIMKey("rsa")
			if err != nil {
				t.Fatal(err)
			}
			d := &store.Domain{Name: name, Selector: "s1", Algorithm: "rsa", PrivateKey: priv, PublicKey: pub}
			if err := st.CreateDomain(ctx, d); err != nil {
				t.Fatal(err)
			}
			return d
		}
		good, wrong, missing, twoSPF := newDomain("good.example"), newDomain("wrong.example"), newDomain("missing.example"), newDomain("two.example")
		other := newDomain("other.example")
		_, goodValue := relay.DKIMRecord(good)
		_, otherValue := relay.DKIMRecord(other)
		dns := dnstest.New(t,
			dnstest.TXT("s1._domainkey.good.example", goodValue), // a 2048-bit key: several strings
			`good.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
			`good.example. 300 IN TXT "google-site-verification=abc"`,
			dnstest.TXT("s1._domainkey.wrong.example", otherValue),
			`two.example. 300 IN TXT "v=spf1 -all"`,
			`two.example. 300 IN TXT "v=spf1 ~all"`,
		)
		s := New(st, dns.Addr())

		res, err := s.Verify(ctx, good, true, true)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Status.OwnershipVerified || res.Status.DKIMStatus != store.VerifyValid || res.Status.SPFStatus != store.VerifyValid ||
			res.SPFRecord != "v=spf1 ip4:192.0.2.0/24 -all" || !strings.Contains(res.DKIMRecord, good.PublicKey) {
			t.Errorf("good: %+v", res)
		}
		if stored, _ := st.DomainStatus(ctx, "good.example"); stored != res.Status {
			t.Errorf("stored %+v, want %+v", stored, res.Status)
		}
		for _, tc := range []struct {
			d         *store.Domain
			dkimWhy   string
			spfStatus string
			spfWhy    string
		}{
			{wrong, "is not this domain's public key", store.VerifyInvalid, "no SPF record"},
			{missing, "no TXT record at s1._domainkey.missing.example", store.VerifyInvalid, "no SPF record"},
			{twoSPF, "no TXT record", store.VerifyInvalid, "2 SPF records"},
		} {
			res, err := s.Verify(ctx, tc.d, true, true)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status.OwnershipVerified || res.Status.DKIMStatus != store.VerifyInvalid || !strings.Contains(res.Status.DKIMError, tc.dkimWhy) ||
				res.Status.SPFStatus != tc.spfStatus || !strings.Contains(res.Status.SPFError, tc.spfWhy) {
				t.Errorf("%s: %+v", tc.d.Name, res.Status)
			}
		}
		// Only SPF asked: DKIM keeps its result.
		res, err = s.Verify(ctx, good, false, true)
		if err != nil || !res.Status.OwnershipVerified {
			t.Errorf("SPF-only verification lost the DKIM result: %+v, %v", res.Status, err)
		}
		// A DNS server that does not answer: unverified, with the reason.
		dead := New(st, "127.0.0.1:1")
		res, err = dead.Verify(ctx, other, true, false)
		if err != nil || res.Status.DKIMStatus != store.VerifyUnverified || !strings.Contains(res.Status.DKIMError, "try again later") {
			t.Errorf("unreachable DNS: %+v, %v", res.Status, err)
		}

		// Update: a new selector resets the verification.
		sel, shared := "s2", true
		d, err := s.Update(ctx, good, UpdateParams{Selector: &sel, Shared: &shared})
		if err != nil || d.Selector != "s2" || !d.Shared {
			t.Fatalf("update: %+v, %v", d, err)
		}
		if st2, _ := st.DomainStatus(ctx, "good.example"); st2.OwnershipVerified {
			t.Errorf("verification kept after a selector change: %+v", st2)
		}
		bad := "-x"
		if _, err := s.Update(ctx, good, UpdateParams{Selector: &bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("bad selector: %v", err)
		}
		sub := *other
		sub.Subaccount = 3
		if _, err := s.Update(ctx, &sub, UpdateParams{Shared: &shared}); !errors.Is(err, ErrInvalid) {
			t.Errorf("sharing a subaccount's domain: %v", err)
		}
	})
}
