package auth

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseAllowedIPs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{}, nil},
		{[]string{"10.0.0.0/8"}, []string{"10.0.0.0/8"}},
		{[]string{"10.1.2.3/8"}, []string{"10.0.0.0/8"}}, // masked
		{[]string{"192.0.2.7"}, []string{"192.0.2.7/32"}},
		{[]string{"2001:db8::/32"}, []string{"2001:db8::/32"}},
		{[]string{"2001:db8:1:2::5/48"}, []string{"2001:db8:1::/48"}},
		{[]string{"::1"}, []string{"::1/128"}},
		{[]string{" 192.0.2.7 ", "192.0.2.7/32"}, []string{"192.0.2.7/32"}}, // trimmed, deduplicated
		{[]string{"::ffff:192.0.2.7"}, []string{"192.0.2.7/32"}},            // v4-mapped → v4
		{[]string{"::ffff:10.0.0.0/104"}, []string{"10.0.0.0/8"}},
		{[]string{"0.0.0.0/0", "::/0"}, []string{"0.0.0.0/0", "::/0"}},
	}
	for _, c := range cases {
		got, err := ParseAllowedIPs(c.in)
		if err != nil {
			t.Errorf("ParseAllowedIPs(%q): %v", c.in, err)
			continue
		}
		var gs []string
		for _, p := range got {
			gs = append(gs, p.String())
		}
		if !slices.Equal(gs, c.want) {
			t.Errorf("ParseAllowedIPs(%q) = %q, want %q", c.in, gs, c.want)
		}
	}

	mustFail := []struct {
		in  []string
		bad string
	}{
		{[]string{"10.0.0.0/33"}, `"10.0.0.0/33"`},
		{[]string{"192.0.2.7", "example.com"}, `"example.com"`},
		{[]string{"256.0.0.1"}, `"256.0.0.1"`},
		{[]string{"2001:db8::/129"}, `"2001:db8::/129"`},
		{[]string{""}, `""`},
		{[]string{"10.0.0.0/"}, `"10.0.0.0/"`},
		{[]string{"10.0.0.0/-1"}, `"10.0.0.0/-1"`},
		{[]string{"fe80::1%eth0"}, `"fe80::1%eth0"`},
		{[]string{"10.0.0.1-10.0.0.9"}, `"10.0.0.1-10.0.0.9"`},
		{[]string{"::ffff:10.0.0.0/90"}, `"::ffff:10.0.0.0/90"`},
		{[]string{"10.0.0.0/8,10.1.0.0/16"}, `"10.0.0.0/8,10.1.0.0/16"`},
	}
	for _, c := range mustFail {
		got, err := ParseAllowedIPs(c.in)
		if err == nil {
			t.Errorf("ParseAllowedIPs(%q) = %v, want an error", c.in, got)
			continue
		}
		if !strings.Contains(err.Error(), c.bad+" is not an IP address or CIDR prefix") {
			t.Errorf("ParseAllowedIPs(%q) = %q, want it to name %s", c.in, err, c.bad)
		}
	}
}

func TestIPAllowed(t *testing.T) {
	t.Parallel()
	list, err := ParseAllowedIPs([]string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		allowed []netip.Prefix
		ip      string
		want    bool
	}{
		{nil, "198.51.100.1", true},
		{nil, "2001:db8::1", true},
		{list, "10.200.0.1", true},
		{list, "11.0.0.1", false},
		{list, "192.0.2.7", true},
		{list, "192.0.2.8", false},
		{list, "::ffff:192.0.2.7", true}, // dual-stack listener's view of an IPv4 peer
		{list, "::ffff:10.1.1.1", true},
		{list, "::ffff:11.1.1.1", false},
		{list, "2001:db8:ffff::1", true},
		{list, "2001:db9::1", false},
		{list, "::1", false},
		{list, "fe80::1%eth0", false},
	}
	for _, c := range cases {
		if got := IPAllowed(c.allowed, netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("IPAllowed(%v, %s) = %v, want %v", c.allowed, c.ip, got, c.want)
		}
	}
	if IPAllowed(list, netip.Addr{}) {
		t.Error("IPAllowed(list, invalid address) = true, want false")
	}
	if !IPAllowed(nil, netip.Addr{}) {
		t.Error("IPAllowed(nil, invalid address) = false, want true")
	}
}
