package auth

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// FuzzParseAllowedIPs checks the invariants of a parsed allowed-IPs list:
// every prefix is valid, masked, not an IPv4-mapped IPv6 form, contains its
// own address, parses back to itself, and appears once.
func FuzzParseAllowedIPs(f *testing.F) {
	for _, s := range []string{
		"10.0.0.0/8", "192.0.2.7", "::1", "2001:db8::/32", "::ffff:10.0.0.0/104",
		"10.0.0.0/33", "fe80::1%eth0", " 1.2.3.4 ,5.6.7.8", "0.0.0.0/0", "::ffff:1.2.3.4/128",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ps, err := ParseAllowedIPs(strings.Split(in, ","))
		if err != nil {
			if !strings.Contains(err.Error(), "is not an IP address or CIDR prefix") {
				t.Fatalf("error %q does not say what is wrong", err)
			}
			var pe *ParamError
			if !errors.As(err, &pe) || pe.Field != FieldAllowedIPs || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %q is not a ParamError for %s matching ErrInvalid", err, FieldAllowedIPs)
			}
			return
		}
		seen := map[netip.Prefix]bool{}
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("%q gave prefix %v: not valid, masked and unmapped", in, p)
			}
			if seen[p] {
				t.Fatalf("%q gave %v twice", in, p)
			}
			seen[p] = true
			if !IPAllowed([]netip.Prefix{p}, p.Addr()) {
				t.Fatalf("%v does not allow its own address", p)
			}
			again, err := ParseAllowedIPs([]string{p.String()})
			if err != nil || len(again) != 1 || again[0] != p {
				t.Fatalf("%v parses back as %v, %v", p, again, err)
			}
		}
	})
}

// FuzzWellFormed checks that exactly the 40-character lowercase hex strings
// are well formed.
func FuzzWellFormed(f *testing.F) {
	f.Add("14ac5499cfdd2bb2859e4476d2e5b1d2bad079bf")
	f.Add("14AC5499CFDD2BB2859E4476D2E5B1D2BAD079BF")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		want := len(s) == KeyLen && strings.Trim(s, "0123456789abcdef") == ""
		if got := WellFormed(s); got != want {
			t.Fatalf("WellFormed(%q) = %v, want %v", s, got, want)
		}
	})
}
