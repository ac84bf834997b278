package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/subaccounts"
)

// subaccountRequest is the body of POST and PUT /api/v1/subaccounts[/{id}]
// (SparkPost's fields). Pointers tell "absent" from "empty".
type subaccountRequest struct {
	Name        *string  `json:"name"`
	Status      *string  `json:"status"`
	SetupAPIKey *bool    `json:"setup_api_key"`
	KeyLabel    string   `json:"key_label"`
	KeyGrants   []string `json:"key_grants"`
	KeyValidIPs []string `json:"key_valid_ips"`
}

// masterOnly refuses a request not made by a master key for every account:
// subaccounts are the master account's business.
func masterOnly(c *caller) error {
	if c.id.Subaccount != 0 {
		return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
			Description: "subaccounts are managed with a master-account key; this key belongs to a subaccount"}
	}
	if !c.scope.all {
		return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
			Description: "subaccounts are managed by the master account: send the request without " + subaccountHeader}
	}
	return nil
}

// subaccountError maps an error of subaccounts.Service: a refused
// parameter is a 422 naming the API's field, no such subaccount a 404.
func subaccountError(err error, id int64) error {
	var pe *subaccounts.ParamError
	var ape *auth.ParamError
	switch {
	case errors.As(err, &pe):
		field := pe.Field
		if field == subaccounts.FieldID {
			field = "subaccount_id"
		}
		return invalid("%s: %v", field, pe.Err)
	case errors.As(err, &ape):
		field := "key_" + apiField(ape.Field)
		if ape.Field == auth.FieldAllowedIPs {
			field = "key_valid_ips"
		}
		return invalid("%s: %v", field, ape.Err)
	case errors.Is(err, store.ErrNotFound):
		return notFound("no subaccount %d (list them with GET /api/v1/subaccounts)", id)
	}
	return err
}

// pathSubaccount parses the {id} of the path; a malformed one is a 404.
func pathSubaccount(r *http.Request) (int64, error) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, notFound("no subaccount %q: a subaccount id is a positive number", raw)
	}
	return id, nil
}

// listSubaccounts answers GET /api/v1/subaccounts.
func (s *server) listSubaccounts(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := masterOnly(c); err != nil {
		return err
	}
	list, err := s.subs.List(r.Context())
	if err != nil {
		return err
	}
	out := make([]Subaccount, 0, len(list))
	for _, sa := range list {
		out = append(out, NewSubaccount(sa))
	}
	writeResults(w, out)
	return nil
}

// createSubaccount answers POST /api/v1/subaccounts. As in SparkPost,
// setup_api_key defaults to true, and then key_label and key_grants are
// required; the key appears in this answer only.
func (s *server) createSubaccount(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := masterOnly(c); err != nil {
		return err
	}
	var q subaccountRequest
	if err := decode(w, r, &q); err != nil {
		return err
	}
	if q.Name == nil {
		return invalid("name is required, e.g. {\"name\": \"Acme Corp\", \"key_label\": \"Acme SMTP\", \"key_grants\": [\"smtp/inject\"]}")
	}
	if q.Status != nil && *q.Status != store.SubaccountActive {
		return invalid("status: a new subaccount is active; suspend it afterwards with PUT /api/v1/subaccounts/{id}")
	}
	setup := q.SetupAPIKey == nil || *q.SetupAPIKey
	if setup && q.KeyLabel == "" {
		return invalid("key_label is required when setup_api_key is true (the default): name the subaccount's first key, or send \"setup_api_key\": false")
	}
	if setup && len(q.KeyGrants) == 0 {
		return invalid("key_grants are required when setup_api_key is true (the default), e.g. [\"%s\"]", auth.GrantSMTPInject)
	}
	created, err := s.subs.Create(r.Context(), subaccounts.CreateParams{Name: *q.Name, SetupKey: setup,
		KeyLabel: q.KeyLabel, KeyGrants: q.KeyGrants, KeyValidIPs: q.KeyValidIPs})
	if err != nil {
		return subaccountError(err, 0)
	}
	sa := created.Subaccount
	s.log.Info("api: subaccount created", "subaccount", sa.ID, "name", sa.Name, "by_key", c.id.KeyID, "remote", r.RemoteAddr)
	out := SubaccountCreated{ID: sa.ID}
	if k := created.KeyRecord; k != nil {
		s.log.Info("api: key created", "key_id", k.ID, "label", k.Label, "subaccount", k.Subaccount, "by_key", c.id.KeyID, "remote", r.RemoteAddr)
		out.Key, out.Label, out.ShortKey = created.Key, k.Label, k.ShortKey
	}
	writeResults(w, out)
	return nil
}

// getSubaccount answers GET /api/v1/subaccounts/{id}.
func (s *server) getSubaccount(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := masterOnly(c); err != nil {
		return err
	}
	id, err := pathSubaccount(r)
	if err != nil {
		return err
	}
	sa, err := s.subs.Get(r.Context(), id)
	if err != nil {
		return subaccountError(err, id)
	}
	writeResults(w, NewSubaccount(sa))
	return nil
}

// updateSubaccount answers PUT /api/v1/subaccounts/{id}: name and status.
func (s *server) updateSubaccount(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := masterOnly(c); err != nil {
		return err
	}
	id, err := pathSubaccount(r)
	if err != nil {
		return err
	}
	var q subaccountRequest
	if err := decode(w, r, &q); err != nil {
		return err
	}
	sa, n, err := s.subs.Update(r.Context(), id, subaccounts.UpdateParams{Name: q.Name, Status: q.Status})
	if err != nil {
		return subaccountError(err, id)
	}
	s.log.Info("api: subaccount updated", "subaccount", id, "name", sa.Name, "status", sa.Status,
		"queued_recipients_changed", n, "by_key", c.id.KeyID, "remote", r.RemoteAddr)
	writeResults(w, map[string]string{"message": fmt.Sprintf("Successfully updated subaccount information (status %s)", sa.Status)})
	return nil
}
