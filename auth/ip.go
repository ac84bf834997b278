package auth

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseAllowedIPs parses a key's allowed client addresses: IPv4 or IPv6
// CIDR prefixes ("10.0.0.0/8", "2001:db8::/32") or bare addresses
// ("192.0.2.7" is 192.0.2.7/32, "::1" is ::1/128). Surrounding white space is
// ignored. Prefixes are masked (10.1.2.3/8 becomes 10.0.0.0/8), IPv4-mapped
// IPv6 forms are turned into IPv4 (::ffff:192.0.2.7 is 192.0.2.7/32), and
// duplicates are dropped, keeping the order. Addresses with a zone
// ("fe80::1%eth0") are refused: a zone names a local interface, which a
// client never has. The error is a [*ParamError] for FieldAllowedIPs naming
// the first bad entry.
//
// An empty or nil list gives a nil list: any address is allowed.
func ParseAllowedIPs(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := parsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, &ParamError{Field: FieldAllowedIPs, Err: err}
		}
		dup := false
		for _, q := range out {
			if q == p {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, p)
		}
	}
	return out, nil
}

// parsePrefix parses one entry of an allowed IPs list.
func parsePrefix(s string) (netip.Prefix, error) {
	bad := fmt.Errorf("%q is not an IP address or CIDR prefix", s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, bad
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, bad
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		// ::ffff:0:0/96 and longer are IPv4 prefixes written as IPv6. Clients
		// are compared unmapped (IPAllowed), so store them as IPv4.
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix: an IPv4-mapped IPv6 prefix needs at least 96 bits", s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// IPAllowed reports whether client may use a key restricted to allowed. An
// empty list allows every address. IPv4-mapped IPv6 clients
// (::ffff:192.0.2.7, as a dual-stack listener reports IPv4 peers) are
// compared as IPv4. An invalid (zero) client address is allowed only by an
// empty list.
func IPAllowed(allowed []netip.Prefix, ip netip.Addr) bool {
	if len(allowed) == 0 {
		return true
	}
	ip = ip.Unmap().WithZone("")
	for _, p := range allowed {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
