// Package domains changes sending domains after creation and verifies
// their DNS records (SPEC §5), for the HTTP API (PUT
// /api/v1/sending-domains/{d}, POST .../verify) and the status object of
// GET:
//
//   - [Service.Update] changes what SparkPost lets one change and smtpgw
//     has: shared_with_subaccounts (master-account domains only) and the
//     DKIM selector (the key stays; the verification is reset, since the
//     record to publish moved). One function, the place to record the
//     change (audit log).
//   - [Service.Verify] looks up the DKIM TXT record
//     "selector._domainkey.domain" and compares its p= with the domain's
//     public key: equal is dkim_status valid and ownership_verified; no
//     record or another key is invalid, with the reason. The SPF check
//     wants exactly one "v=spf1" TXT record at the domain (two or more is
//     an error, RFC 7208 §4.5); smtpgw has no return-path domain of its
//     own, so there is no bounce (CNAME/MX) check. A lookup that fails for
//     a reason other than "no such record" (timeout, SERVFAIL) leaves that
//     check unverified, with the reason. The result is stored with the
//     domain ([store.DomainUpdateStore]).
//
// The DNS server asked is configurable (relay.dns_resolver, as for MX
// lookups); tests use a miekg/dns server on loopback.
//
// relay.require_verified_domains (smtpd) refuses mail from a domain whose
// ownership is not verified.
package domains

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// ErrInvalid is matched by every [*ParamError].
var ErrInvalid = errors.New("invalid sending domain parameter")

// ParamError is a refused parameter.
type ParamError struct {
	Field string
	Err   error
}

func (e *ParamError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *ParamError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ParamError) Is(target error) bool { return target == ErrInvalid }

// lookupTimeout bounds each DNS lookup of a verification.
const lookupTimeout = 10 * time.Second

// Service performs the operations.
type Service struct {
	st       store.Store
	resolver *net.Resolver
}

// New returns a Service on st asking the DNS server at dnsServer
// ("host:port"; "" for the system resolver).
func New(st store.Store, dnsServer string) *Service {
	r := net.DefaultResolver
	if dnsServer != "" {
		if _, _, err := net.SplitHostPort(dnsServer); err != nil {
			dnsServer = net.JoinHostPort(dnsServer, "53")
		}
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, dnsServer)
		}}
	}
	return &Service{st: st, resolver: r}
}

// UpdateParams are the changes; nil keeps the value.
type UpdateParams struct {
	Shared   *bool
	Selector *string
}

// Update changes domain d (already looked up, in the caller's scope).
func (s *Service) Update(ctx context.Context, d *store.Domain, p UpdateParams) (*store.Domain, error) {
	nd := *d
	if p.Shared != nil {
		if *p.Shared && d.Subaccount != 0 {
			return nil, &ParamError{Field: "shared_with_subaccounts", Err: errors.New("only a master-account domain can be shared")}
		}
		nd.Shared = *p.Shared
	}
	if p.Selector != nil {
		if !ValidSelector(*p.Selector) {
			return nil, &ParamError{Field: "dkim_selector", Err: fmt.Errorf("%q is not a DNS label (letters, digits and hyphens)", *p.Selector)}
		}
		nd.Selector = *p.Selector
	}
	if err := s.st.UpdateDomain(ctx, &nd); err != nil {
		return nil, fmt.Errorf("update sending domain %s: %w", d.Name, err)
	}
	return &nd, nil
}

// ValidSelector reports whether sel can be a DKIM selector: one DNS label.
func ValidSelector(sel string) bool {
	if sel == "" || len(sel) > 63 || sel[0] == '-' || sel[len(sel)-1] == '-' {
		return false
	}
	for _, r := range strings.ToLower(sel) {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Result is a verification: the stored status and what DNS had.
type Result struct {
	Status store.DomainStatus
	// DKIMRecord and SPFRecord are the records found ("" if none).
	DKIMRecord, SPFRecord string
}

// Verify checks d's DNS records (DKIM, SPF, or both) and stores the
// result. A check not asked for keeps its previous result.
func (s *Service) Verify(ctx context.Context, d *store.Domain, dkim, spf bool) (Result, error) {
	prev, err := s.st.DomainStatus(ctx, d.Name)
	if err != nil {
		return Result{}, fmt.Errorf("verify sending domain %s: %w", d.Name, err)
	}
	res := Result{Status: prev}
	if dkim {
		res.Status.DKIMStatus, res.DKIMRecord, res.Status.DKIMError = s.checkDKIM(ctx, d)
		res.Status.OwnershipVerified = res.Status.DKIMStatus == store.VerifyValid
	}
	if spf {
		res.Status.SPFStatus, res.SPFRecord, res.Status.SPFError = s.checkSPF(ctx, d.Name)
	}
	res.Status.VerifiedAt = time.Now().UTC().Truncate(time.Microsecond)
	if err := s.st.SetDomainStatus(ctx, d.Name, res.Status); err != nil {
		return Result{}, fmt.Errorf("verify sending domain %s: %w", d.Name, err)
	}
	return res, nil
}

// lookupTXT returns the TXT records at name; notFound is set when the
// name or its TXT records do not exist (a definite answer).
func (s *Service) lookupTXT(ctx context.Context, name string) (recs []string, notFound bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	recs, err = s.resolver.LookupTXT(ctx, name)
	var de *net.DNSError
	if errors.As(err, &de) && de.IsNotFound {
		return nil, true, nil
	}
	return recs, len(recs) == 0 && err == nil, err
}

// checkDKIM compares the published p= with the domain's public key.
func (s *Service) checkDKIM(ctx context.Context, d *store.Domain) (status, record, why string) {
	name := d.Selector + "._domainkey." + d.Name
	recs, missing, err := s.lookupTXT(ctx, name)
	switch {
	case err != nil:
		return store.VerifyUnverified, "", fmt.Sprintf("DNS lookup of %s failed: %v; try again later", name, err)
	case missing:
		return store.VerifyInvalid, "", fmt.Sprintf("no TXT record at %s: publish the dkim_record_value shown for the domain", name)
	}
	for _, r := range recs {
		tags := parseTags(r)
		if v, ok := tags["v"]; ok && !strings.EqualFold(v, "DKIM1") {
			continue
		}
		p, ok := tags["p"]
		if !ok {
			continue
		}
		if p == d.PublicKey {
			return store.VerifyValid, r, ""
		}
		return store.VerifyInvalid, r, fmt.Sprintf("the p= of the TXT record at %s is not this domain's public key: publish the dkim_record_value shown for the domain", name)
	}
	return store.VerifyInvalid, strings.Join(recs, " "), fmt.Sprintf("no DKIM key (p=) in the TXT records at %s", name)
}

// checkSPF wants exactly one v=spf1 record at the domain.
func (s *Service) checkSPF(ctx context.Context, domain string) (status, record, why string) {
	recs, missing, err := s.lookupTXT(ctx, domain)
	if err != nil {
		return store.VerifyUnverified, "", fmt.Sprintf("DNS lookup of %s failed: %v; try again later", domain, err)
	}
	var spf []string
	for _, r := range recs {
		if f := strings.Fields(r); len(f) > 0 && strings.EqualFold(f[0], "v=spf1") {
			spf = append(spf, r)
		}
	}
	switch {
	case missing || len(spf) == 0:
		return store.VerifyInvalid, "", fmt.Sprintf("no SPF record (TXT \"v=spf1 ...\") at %s", domain)
	case len(spf) > 1:
		return store.VerifyInvalid, strings.Join(spf, " | "), fmt.Sprintf("%d SPF records at %s: publish exactly one (RFC 7208 section 4.5)", len(spf), domain)
	}
	return store.VerifyValid, spf[0], ""
}

// parseTags parses "k=v; k=v" (RFC 6376 §3.2), removing white space from
// values (a p= may be split over several strings with spaces).
func parseTags(r string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(r, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		out[strings.ToLower(strings.TrimSpace(k))] = strings.Join(strings.Fields(v), "")
	}
	return out
}
