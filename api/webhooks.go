package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/webhooks"
)

// Webhook is a webhook as the API and `smtpgw webhooks show --json` show
// it, with SparkPost's field names. Passwords and client secrets of
// auth_request_details are masked; the signing secret is shown only in the
// answer to its creation.
type Webhook struct {
	ID                 string            `json:"id"`
	Name               string            `json:"name"`
	Target             string            `json:"target"`
	Events             []string          `json:"events"`
	Active             bool              `json:"active"`
	AuthType           string            `json:"auth_type"`
	AuthRequestDetails map[string]any    `json:"auth_request_details,omitempty"`
	CustomHeaders      map[string]string `json:"custom_headers,omitempty"`
	// Subaccount is the one subaccount whose events it gets; absent: the
	// master account and every subaccount.
	Subaccount *int64 `json:"subaccount_id,omitempty"`
	// SigningSecret keys the X-Smtpgw-Signature header; only on creation.
	SigningSecret string `json:"signing_secret,omitempty"`
	CreatedAt     string `json:"created_at"`
	UpdatedAt     string `json:"updated_at"`
	Links         []link `json:"links"`
}

type link struct {
	Href   string   `json:"href"`
	Rel    string   `json:"rel"`
	Method []string `json:"method"`
}

// masked replaces a secret in shown auth details.
const masked = "********"

// NewWebhook returns the JSON shape of a stored webhook.
func NewWebhook(w *store.Webhook) Webhook {
	j := Webhook{ID: w.ID, Name: w.Name, Target: w.Target, Events: w.Events, Active: w.Active, AuthType: w.AuthType,
		Subaccount: w.Subaccount, CreatedAt: w.CreatedAt.UTC().Format(time.RFC3339),
		UpdatedAt: w.UpdatedAt.UTC().Format(time.RFC3339)}
	if j.Events == nil {
		j.Events = []string{}
	}
	var d map[string]any
	if json.Unmarshal(w.Auth, &d) == nil && len(d) > 0 {
		if _, ok := d["password"]; ok {
			d["password"] = masked
		}
		if body, ok := d["body"].(map[string]any); ok {
			if _, ok := body["client_secret"]; ok {
				body["client_secret"] = masked
			}
		}
		j.AuthRequestDetails = d
	}
	var h map[string]string
	if json.Unmarshal(w.Headers, &h) == nil && len(h) > 0 {
		j.CustomHeaders = h
	}
	base := "/api/v1/webhooks/" + w.ID
	j.Links = []link{
		{Href: base, Rel: "urn.msys.webhooks.webhook", Method: []string{"GET", "PUT", "DELETE"}},
		{Href: base + "/validate", Rel: "urn.msys.webhooks.validate", Method: []string{"POST"}},
		{Href: base + "/batch-status", Rel: "urn.msys.webhooks.batches", Method: []string{"GET"}},
	}
	return j
}

// routeWebhooks registers SparkPost's webhook paths. The grant depends on
// the method: webhooks/view to read, webhooks/modify to change.
func (s *server) routeWebhooks(mux *http.ServeMux) {
	view, modify := auth.GrantWebhooksView, auth.GrantWebhooksModify
	s.route(mux, "/api/v1/webhooks", "", methods{
		http.MethodGet:  need(view, s.listWebhooks),
		http.MethodPost: need(modify, s.createWebhook),
	})
	s.route(mux, "/api/v1/webhooks/{id}", "", methods{
		http.MethodGet:    need(view, s.getWebhook),
		http.MethodPut:    need(modify, s.updateWebhook),
		http.MethodDelete: need(modify, s.deleteWebhook),
	})
	s.route(mux, "/api/v1/webhooks/{id}/validate", "", methods{http.MethodPost: need(modify, s.validateWebhook)})
	s.route(mux, "/api/v1/webhooks/{id}/batch-status", "", methods{http.MethodGet: need(view, s.webhookBatchStatus)})
}

// need wraps h so that it runs only for a key holding grant (403 else).
func need(grant string, h handler) handler {
	return func(w http.ResponseWriter, r *http.Request, c *caller) error {
		if !c.id.Has(grant) {
			return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
				Description: "this API key lacks the " + grant + " grant"}
		}
		return h(w, r, c)
	}
}

// webhookErr turns a webhooks.Error into a 400 and a missing webhook into a 404.
func webhookErr(err error) error {
	var we *webhooks.Error
	switch {
	case errors.As(err, &we):
		return &Error{Status: http.StatusBadRequest, Message: "Invalid data", Description: we.Msg}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Message: "Resource could not be found",
			Description: "no such webhook (GET /api/v1/webhooks lists them)"}
	}
	return err
}

// webhookInScope returns webhook id if the caller's scope holds it (404
// otherwise, as if it did not exist).
func (s *server) webhookInScope(r *http.Request, c *caller) (*store.Webhook, error) {
	w, err := s.st.GetWebhook(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, webhookErr(err)
	}
	if !c.scope.all && (w.Subaccount == nil || *w.Subaccount != c.scope.sub) {
		return nil, webhookErr(store.ErrNotFound)
	}
	return w, nil
}

func (s *server) listWebhooks(w http.ResponseWriter, r *http.Request, c *caller) error {
	ws, err := s.st.ListWebhooks(r.Context())
	if err != nil {
		return err
	}
	out := []Webhook{}
	for _, wh := range ws {
		if c.scope.all || (wh.Subaccount != nil && *wh.Subaccount == c.scope.sub) {
			out = append(out, NewWebhook(wh))
		}
	}
	writeResults(w, out)
	return nil
}

func (s *server) getWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	wh, err := s.webhookInScope(r, c)
	if err != nil {
		return err
	}
	writeResults(w, NewWebhook(wh))
	return nil
}

// decodeWebhook reads a webhooks.Input body.
func decodeWebhook(w http.ResponseWriter, r *http.Request) (webhooks.Input, error) {
	var in webhooks.Input
	if err := decode(w, r, &in); err != nil {
		return in, err
	}
	return in, nil
}

// createWebhook answers POST /api/v1/webhooks. The webhook belongs to the
// request's scope: an unscoped master key's webhook gets the events of
// every account, a scoped one those of its subaccount.
func (s *server) createWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	in, err := decodeWebhook(w, r)
	if err != nil {
		return err
	}
	var sub *int64
	if !c.scope.all {
		n := c.scope.sub
		sub = &n
	}
	wh, err := s.hooks.Create(r.Context(), sub, in)
	if err != nil {
		return webhookErr(err)
	}
	s.log.Info("api: webhook created", "id", wh.ID, "key_id", c.id.KeyID)
	j := NewWebhook(wh)
	j.SigningSecret = wh.Secret
	writeResults(w, j)
	return nil
}

func (s *server) updateWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	if _, err := s.webhookInScope(r, c); err != nil {
		return err
	}
	in, err := decodeWebhook(w, r)
	if err != nil {
		return err
	}
	wh, err := s.hooks.Update(r.Context(), r.PathValue("id"), in)
	if err != nil {
		return webhookErr(err)
	}
	s.log.Info("api: webhook updated", "id", wh.ID, "key_id", c.id.KeyID)
	writeResults(w, NewWebhook(wh))
	return nil
}

func (s *server) deleteWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	wh, err := s.webhookInScope(r, c)
	if err != nil {
		return err
	}
	if err := s.hooks.Delete(r.Context(), wh.ID); err != nil {
		return webhookErr(err)
	}
	s.log.Info("api: webhook deleted", "id", wh.ID, "key_id", c.id.KeyID)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// validateWebhook answers POST /api/v1/webhooks/{id}/validate: the body's
// message (default {"msys":{}}) is POSTed to the target and the answer
// reported.
func (s *server) validateWebhook(w http.ResponseWriter, r *http.Request, c *caller) error {
	wh, err := s.webhookInScope(r, c)
	if err != nil {
		return err
	}
	var in struct {
		Message json.RawMessage `json:"message"`
	}
	if r.ContentLength != 0 {
		if err := decode(w, r, &in); err != nil {
			return err
		}
	}
	res := s.hooks.Validate(r.Context(), wh, in.Message)
	type answer struct {
		Status  int               `json:"status"`
		Headers map[string]string `json:"headers"`
		Body    string            `json:"body"`
		Error   string            `json:"error,omitempty"`
	}
	out := struct {
		Msg      string `json:"msg"`
		Response answer `json:"response"`
	}{Msg: "Test POST to endpoint succeeded", Response: answer{Status: res.Status, Headers: map[string]string{}, Body: res.Body}}
	for k := range res.Headers {
		out.Response.Headers[k] = res.Headers.Get(k)
	}
	if !res.OK() {
		out.Msg = "Test POST to endpoint failed"
		if res.Err != nil {
			out.Response.Error = res.Err.Error()
		}
	}
	writeResults(w, out)
	return nil
}

// batchStatus is one attempt as SparkPost's batch-status lists it.
type batchStatus struct {
	BatchID      string `json:"batch_id"`
	Timestamp    string `json:"ts"`
	Attempts     int    `json:"attempts"`
	ResponseCode string `json:"response_code"`
	FailureCode  string `json:"failure_code,omitempty"`
	Error        string `json:"error,omitempty"` // smtpgw: what failed without an HTTP answer
	Node         string `json:"node,omitempty"`  // smtpgw: the gateway that sent it
}

// webhookBatchStatus answers GET /api/v1/webhooks/{id}/batch-status:
// delivery attempts, newest first (?limit=, default 1000).
func (s *server) webhookBatchStatus(w http.ResponseWriter, r *http.Request, c *caller) error {
	wh, err := s.webhookInScope(r, c)
	if err != nil {
		return err
	}
	limit := 1000
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPerPage {
			return badRequest("limit must be a number from 1 to %d, not %q", maxPerPage, v)
		}
		limit = n
	}
	at, err := s.hooks.BatchStatus(r.Context(), wh.ID, limit)
	if err != nil {
		return err
	}
	out := make([]batchStatus, 0, len(at))
	for _, a := range at {
		b := batchStatus{BatchID: a.BatchID, Timestamp: a.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
			Attempts: a.Attempt, ResponseCode: strconv.Itoa(a.ResponseCode), Node: a.Node}
		if a.Failure != "" {
			if a.ResponseCode != 0 {
				b.FailureCode = strconv.Itoa(a.ResponseCode)
			} else {
				b.Error = a.Failure
			}
		}
		out = append(out, b)
	}
	writeResults(w, out)
	return nil
}
