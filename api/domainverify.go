package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/smtpgw/smtpgw/domains"
	"github.com/smtpgw/smtpgw/store"
)

// DomainStatus is SparkPost's status object of a sending domain. The
// checks smtpgw does not make (abuse@, postmaster@, CNAME and MX of a
// bounce domain, a verification mailbox) are reported "unverified".
type DomainStatus struct {
	OwnershipVerified bool   `json:"ownership_verified"`
	DKIMStatus        string `json:"dkim_status"`
	SPFStatus         string `json:"spf_status"`
	// ComplianceStatus is "valid": there is no compliance review here.
	ComplianceStatus          string `json:"compliance_status"`
	AbuseAtStatus             string `json:"abuse_at_status"`
	PostmasterAtStatus        string `json:"postmaster_at_status"`
	CNAMEStatus               string `json:"cname_status"`
	MXStatus                  string `json:"mx_status"`
	VerificationMailboxStatus string `json:"verification_mailbox_status"`
	// VerifiedAt is the time of the last verification; omitted if never.
	VerifiedAt string `json:"verified_at,omitempty"`
}

// NewDomainStatus returns the JSON shape of a stored status.
func NewDomainStatus(st store.DomainStatus) DomainStatus {
	j := DomainStatus{OwnershipVerified: st.OwnershipVerified, DKIMStatus: st.DKIMStatus, SPFStatus: st.SPFStatus,
		ComplianceStatus: "valid", AbuseAtStatus: store.VerifyUnverified, PostmasterAtStatus: store.VerifyUnverified,
		CNAMEStatus: store.VerifyUnverified, MXStatus: store.VerifyUnverified, VerificationMailboxStatus: store.VerifyUnverified}
	if !st.VerifiedAt.IsZero() {
		j.VerifiedAt = st.VerifiedAt.UTC().Format(time.RFC3339)
	}
	return j
}

// withStatus returns the JSON of d with its status.
func withStatus(d *store.Domain, st store.DomainStatus) Domain {
	j := NewDomain(d)
	s := NewDomainStatus(st)
	j.Status = &s
	return j
}

// domainUpdate is the body of PUT /api/v1/sending-domains/{domain}:
// SparkPost's fields that apply here.
type domainUpdate struct {
	Shared   *bool   `json:"shared_with_subaccounts"`
	Selector *string `json:"dkim_selector"`
	DKIM     *struct {
		Selector string          `json:"selector"`
		Private  json.RawMessage `json:"private"`
		Public   json.RawMessage `json:"public"`
	} `json:"dkim"`
}

// domainError maps an error of domains.Service.
func domainError(err error) error {
	var pe *domains.ParamError
	if errors.As(err, &pe) {
		return invalid("%s: %v", pe.Field, pe.Err)
	}
	return err
}

// updateDomain answers PUT /api/v1/sending-domains/{domain}: it changes
// shared_with_subaccounts and the DKIM selector (dkim_selector, or
// SparkPost's dkim.selector); the key itself cannot be replaced.
func (s *server) updateDomain(w http.ResponseWriter, r *http.Request, c *caller) error {
	var q domainUpdate
	if err := decode(w, r, &q); err != nil {
		return err
	}
	d, err := s.scopedDomain(r, c)
	if err != nil {
		return err
	}
	p := domains.UpdateParams{Shared: q.Shared, Selector: q.Selector}
	if q.DKIM != nil {
		if len(q.DKIM.Private) > 0 || len(q.DKIM.Public) > 0 {
			return invalid("dkim: smtpgw generates the DKIM key itself and keeps it; only dkim.selector can change")
		}
		if q.DKIM.Selector != "" {
			p.Selector = &q.DKIM.Selector
		}
	}
	if p.Shared == nil && p.Selector == nil {
		return invalid("nothing to change: give shared_with_subaccounts or dkim_selector (dkim.selector)")
	}
	d, err = s.doms.Update(r.Context(), d, p)
	if err != nil {
		return domainError(err)
	}
	s.log.Info("api: sending domain updated", "domain", d.Name, "shared", d.Shared, "selector", d.Selector,
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	writeResults(w, map[string]string{"message": "Successfully Updated Domain.", "domain": d.Name})
	return nil
}

// verifyDomain answers POST /api/v1/sending-domains/{domain}/verify:
// {"dkim_verify": true, "spf_verify": true} (neither given: both) look up
// the records; the answer is the status object with the records found
// and the reasons of failures.
func (s *server) verifyDomain(w http.ResponseWriter, r *http.Request, c *caller) error {
	var q struct {
		DKIM *bool `json:"dkim_verify"`
		SPF  *bool `json:"spf_verify"`
	}
	if r.ContentLength != 0 {
		if err := decode(w, r, &q); err != nil && r.ContentLength > 0 {
			return err
		}
	}
	dkim, spf := q.DKIM != nil && *q.DKIM, q.SPF != nil && *q.SPF
	if q.DKIM == nil && q.SPF == nil {
		dkim, spf = true, true
	}
	if !dkim && !spf {
		return invalid("nothing to verify: set dkim_verify and/or spf_verify to true")
	}
	d, err := s.scopedDomain(r, c)
	if err != nil {
		return err
	}
	res, err := s.doms.Verify(r.Context(), d, dkim, spf)
	if err != nil {
		return domainError(err)
	}
	s.log.Info("api: sending domain verified", "domain", d.Name, "dkim", res.Status.DKIMStatus, "spf", res.Status.SPFStatus,
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	type dnsJSON struct {
		DKIMRecord string `json:"dkim_record,omitempty"`
		DKIMError  string `json:"dkim_error,omitempty"`
		SPFRecord  string `json:"spf_record,omitempty"`
		SPFError   string `json:"spf_error,omitempty"`
	}
	writeResults(w, struct {
		DomainStatus
		DNS dnsJSON `json:"dns"`
	}{NewDomainStatus(res.Status), dnsJSON{DKIMRecord: res.DKIMRecord, DKIMError: res.Status.DKIMError,
		SPFRecord: res.SPFRecord, SPFError: res.Status.SPFError}})
	return nil
}
