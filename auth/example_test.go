package auth_test

import (
	"fmt"
	"net/netip"

	"github.com/smtpgw/smtpgw/auth"
)

func ExampleParseAllowedIPs() {
	allowed, err := auth.ParseAllowedIPs([]string{"10.1.2.3/8", "192.0.2.7", "2001:db8::/32"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(allowed)
	fmt.Println(auth.IPAllowed(allowed, netip.MustParseAddr("::ffff:10.9.9.9")))
	fmt.Println(auth.IPAllowed(allowed, netip.MustParseAddr("198.51.100.1")))

	_, err = auth.ParseAllowedIPs([]string{"10.0.0.0/33"})
	fmt.Println(err)
	// Output:
	// [10.0.0.0/8 192.0.2.7/32 2001:db8::/32]
	// true
	// false
	// allowed IPs: "10.0.0.0/33" is not an IP address or CIDR prefix
}

func ExampleValidateGrants() {
	fmt.Println(auth.ValidateGrants([]string{"smtp/inject", "transmissions/modify"}))
	fmt.Println(auth.IsEnforced("transmissions/modify"))
	fmt.Println(auth.ValidateGrants(nil))
	// Output:
	// <nil>
	// false
	// grants: no grant given: give at least one, e.g. smtp/inject
}
