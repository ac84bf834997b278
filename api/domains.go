package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/smtpgw/smtpgw/relay"
	"github.com/smtpgw/smtpgw/store"
)

// domainRequest is the body of POST /api/v1/sending-domains.
type domainRequest struct {
	// Domain is the domain name (required).
	Domain string `json:"domain"`
	// Shared lets every subaccount send from a master-account domain.
	Shared bool `json:"shared_with_subaccounts"`
	// Algorithm is the DKIM key algorithm: "rsa" (default) or "ed25519".
	Algorithm string `json:"dkim_algorithm"`
	// Selector overrides the configured DKIM selector.
	Selector string `json:"dkim_selector"`
	// DKIM is SparkPost's field for bringing one's own key: refused, since
	// smtpgw always generates the key.
	DKIM json.RawMessage `json:"dkim"`
}

// scopedDomain returns the sending domain named by the path if it is in
// the caller's scope.
func (s *server) scopedDomain(r *http.Request, c *caller) (*store.Domain, error) {
	raw := r.PathValue("domain")
	name, err := NormalizeDomain(raw)
	if err != nil {
		return nil, notFound("no sending domain %q: %v", raw, err)
	}
	d, err := s.st.GetDomain(r.Context(), name)
	if err == nil && !c.scope.has(d.Subaccount) {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("no sending domain %s (list them with GET /api/v1/sending-domains)", name)
	}
	return d, err
}

// listDomains answers GET /api/v1/sending-domains: the domains in scope.
func (s *server) listDomains(w http.ResponseWriter, r *http.Request, c *caller) error {
	ds, err := s.st.ListDomains(r.Context())
	if err != nil {
		return err
	}
	statuses, err := s.st.DomainStatuses(r.Context())
	if err != nil {
		return err
	}
	out := make([]Domain, 0, len(ds))
	for _, d := range ds {
		if c.scope.has(d.Subaccount) {
			st, ok := statuses[d.Name]
			if !ok {
				st = store.DomainStatusDefaults()
			}
			out = append(out, withStatus(d, st))
		}
	}
	writeResults(w, out)
	return nil
}

// createDomain answers POST /api/v1/sending-domains: it generates the
// domain's DKIM key, stores it for the scoped account, and answers the
// DNS TXT record to publish (dkim_record_name, dkim_record_value).
func (s *server) createDomain(w http.ResponseWriter, r *http.Request, c *caller) error {
	var q domainRequest
	if err := decode(w, r, &q); err != nil {
		return err
	}
	if len(q.DKIM) > 0 && string(q.DKIM) != "null" {
		return invalid("dkim: smtpgw generates the DKIM key itself; leave dkim out (dkim_algorithm chooses rsa or ed25519)")
	}
	d, err := CreateDomain(r.Context(), s.st, s.selector, DomainParams{Domain: q.Domain, Shared: q.Shared,
		Algorithm: q.Algorithm, Selector: q.Selector, Subaccount: c.scope.owner()})
	if err != nil {
		return err
	}
	s.log.Info("api: sending domain created", "domain", d.Name, "subaccount", d.Subaccount, "shared", d.Shared,
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	writeResults(w, withStatus(d, store.DomainStatusDefaults()))
	return nil
}

// DomainParams describes a sending domain to create.
type DomainParams struct {
	// Domain is the domain name (required).
	Domain string
	// Shared lets every subaccount send from a master-account domain.
	Shared bool
	// Algorithm is the DKIM key algorithm: "rsa" ("" too) or "ed25519".
	Algorithm string
	// Selector is the DKIM selector; "" means the configured one.
	Selector string
	// Subaccount owns the domain (0: master account).
	Subaccount int64
}

// CreateDomain checks p, generates the domain's DKIM key and stores the
// domain: the one place sending domains are made, for the HTTP API and the
// web console. defaultSelector is used when p.Selector is "". Input the
// admin must fix is an [*Error] (422, or 409 for a name already taken)
// whose Field names the parameter; other errors are store faults.
func CreateDomain(ctx context.Context, st store.Store, defaultSelector string, p DomainParams) (*store.Domain, error) {
	if strings.TrimSpace(p.Domain) == "" {
		return nil, fieldInvalid("domain", "domain is required, e.g. {\"domain\": \"example.com\"}")
	}
	name, err := NormalizeDomain(p.Domain)
	if err != nil {
		return nil, fieldInvalid("domain", "domain: %v", err)
	}
	algo := strings.ToLower(p.Algorithm)
	if algo == "" {
		algo = "rsa"
	}
	if algo != "rsa" && algo != "ed25519" {
		return nil, fieldInvalid("dkim_algorithm", "dkim_algorithm must be rsa or ed25519, not %q", p.Algorithm)
	}
	sel := p.Selector
	if sel == "" {
		sel = defaultSelector
	} else if !validSelector(sel) {
		return nil, fieldInvalid("dkim_selector", "dkim_selector %q is not a DNS label (letters, digits and hyphens)", p.Selector)
	}
	if p.Shared && p.Subaccount != 0 {
		return nil, fieldInvalid("shared_with_subaccounts", "shared_with_subaccounts: only a master-account domain can be shared")
	}
	priv, pub, err := relay.GenerateDKIMKey(algo)
	if err != nil {
		return nil, fmt.Errorf("create sending domain: %w", err)
	}
	d := &store.Domain{Name: name, Subaccount: p.Subaccount, Shared: p.Shared, Selector: sel,
		Algorithm: algo, PrivateKey: priv, PublicKey: pub}
	if err := st.CreateDomain(ctx, d); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, &Error{Status: http.StatusConflict, Message: "resource conflict", Field: "domain",
				Description: fmt.Sprintf("%s is already a sending domain", name)}
		}
		return nil, fmt.Errorf("create sending domain: %w", err)
	}
	return d, nil
}

// getDomain answers GET /api/v1/sending-domains/{domain}.
func (s *server) getDomain(w http.ResponseWriter, r *http.Request, c *caller) error {
	d, err := s.scopedDomain(r, c)
	if err != nil {
		return err
	}
	st, err := s.st.DomainStatus(r.Context(), d.Name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no sending domain %s", d.Name)
	}
	if err != nil {
		return err
	}
	writeResults(w, withStatus(d, st))
	return nil
}

// deleteDomain answers DELETE /api/v1/sending-domains/{domain} with 204.
func (s *server) deleteDomain(w http.ResponseWriter, r *http.Request, c *caller) error {
	d, err := s.scopedDomain(r, c)
	if err != nil {
		return err
	}
	if err := s.st.DeleteDomain(r.Context(), d.Name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return notFound("no sending domain %s", d.Name)
		}
		return fmt.Errorf("delete sending domain: %w", err)
	}
	s.log.Info("api: sending domain deleted", "domain", d.Name, "by_key", c.id.KeyID, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
