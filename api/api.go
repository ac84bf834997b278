// Package api serves smtpgw's SparkPost-shaped JSON APIs (SPEC §7) on the
// HTTP listener, next to /metrics and the health checks:
//
//	GET/POST          /api/v1/api-keys              api_keys/manage
//	GET/PUT/DELETE    /api/v1/api-keys/{id}         api_keys/manage
//	GET               /api/v1/audit                 api_keys/manage
//	GET               /api/v1/authenticate/grants   any valid key
//	GET               /api/v1/events/message        message_events/view
//	GET               /api/v1/message-events        message_events/view (SparkPost's old path)
//	GET/POST          /api/v1/sending-domains       sending_domains/manage
//	GET/PUT/DELETE    /api/v1/sending-domains/{d}   sending_domains/manage
//	POST              /api/v1/sending-domains/{d}/verify  sending_domains/manage
//	GET/POST          /api/v1/subaccounts           subaccounts/manage (master keys only)
//	GET/PUT           /api/v1/subaccounts/{id}      subaccounts/manage (master keys only)
//	GET/POST          /api/v1/webhooks              webhooks/view, webhooks/modify
//	GET/PUT/DELETE    /api/v1/webhooks/{id}         webhooks/view, webhooks/modify
//	POST              /api/v1/webhooks/{id}/validate     webhooks/modify
//	GET               /api/v1/webhooks/{id}/batch-status webhooks/view
//	GET/PUT           /api/v1/suppression-list      suppression_lists/manage
//	GET/PUT/DELETE    /api/v1/suppression-list/{r}  suppression_lists/manage
//
// Every request walks the same steps:
//
//  1. The method must be one the path serves (405 otherwise).
//  2. A client address (the TCP peer) that failed authentication too often
//     gets 429 with Retry-After, without its key being looked at. The
//     budget is the [auth.Verifier]'s, shared with SMTP AUTH, the console
//     and /metrics (smtp.max_auth_failures per smtp.auth_failure_window).
//  3. The API key is read from the Authorization header: the bare key, as
//     SparkPost sends it, "Bearer <key>", or HTTP Basic with the key as the
//     user name. It is verified with [auth.Verifier.VerifyGrant] for the
//     path's grant: 401 for a missing, unknown, revoked or expired key or a client
//     address the key does not allow (counted as a failure), 403 for a
//     valid key without the grant, 503 if the key store does not answer.
//  4. The request is scoped: a subaccount's key acts for its own
//     subaccount only; a master-account key acts for every account, or for
//     subaccount N when the request has "X-MSYS-SUBACCOUNT: N" (0: the
//     master account only). Objects outside the scope are answered 404,
//     as if they did not exist.
//
// Changes are recorded in the audit log (package audit) with the caller's
// key and address as the actor: give New a store wrapped by audit.Wrap,
// and a Manager working on it.
//
// Answers are {"results": ...} or {"errors": [{"message": ...,
// "description": ...}]}. Keys are never logged; the key itself appears
// only in the answer to POST /api/v1/api-keys.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/domains"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/subaccounts"
	"github.com/smtpgw/smtpgw/suppression"
	"github.com/smtpgw/smtpgw/webhooks"
)

// Defaults for Config fields left zero.
const (
	// DefaultDKIMSelector is the DKIM selector when Config.DKIMSelector is "".
	DefaultDKIMSelector = "smtpgw"
)

const (
	// maxBody caps request bodies.
	maxBody = 1 << 20
	// storeTimeout bounds the store calls of one request.
	storeTimeout = 30 * time.Second
	// subaccountHeader scopes a request to a subaccount, as in SparkPost.
	subaccountHeader = "X-MSYS-SUBACCOUNT"
)

// Config configures the API handler.
type Config struct {
	// DKIMSelector is the selector of the DKIM keys POST
	// /api/v1/sending-domains generates when the request names none
	// (relay.dkim_selector); "" means DefaultDKIMSelector.
	DKIMSelector string
	// Logger receives refused requests (at INFO, without the key), changes
	// (at INFO) and server faults (at ERROR). Nil discards.
	Logger *slog.Logger
	// Limits is the node's sending-limit checker (the SMTP server's), told
	// of limits changed through the API so they apply at once on this
	// node; nil: they apply within its cache TTL.
	Limits *limits.Checker
	// Webhooks performs the webhook operations; nil: a Manager with the
	// defaults of package webhooks (private targets refused).
	Webhooks *webhooks.Manager
	// Suppressions is the node's suppression list cache (the SMTP
	// server's), evicted by changes made through the API so they apply at
	// once on this node; nil: none.
	Suppressions *suppression.Checker
	// DNSResolver is the "host:port" of the DNS server asked when a
	// sending domain is verified (relay.dns_resolver); "" is the system
	// resolver.
	DNSResolver string
}

// server holds what the handlers share.
type server struct {
	selector string
	st       store.Store
	v        *auth.Verifier
	m        *auth.Manager
	log      *slog.Logger
	quota    *limits.Checker // nil: none on this node
	subs     *subaccounts.Service
	hooks    *webhooks.Manager
	supp     *suppression.Service
	doms     *domains.Service
}

// Handler serves the /api/ paths (see [New]).
type Handler struct {
	s   *server
	mux *http.ServeMux
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// CheckKey verifies key, presented by request r, for grant exactly as the
// API checks the key of each of its requests (steps 2 and 3 of the package
// comment): a client address over its failure budget is refused without
// the key being looked at, and a refused key counts against that budget.
// Refusals are [*Error] values (401, 403, 429) whose Description may be
// shown to the client; a store fault is returned wrapped. The web console
// signs in with it, so the two frontends share one throttle.
func (h *Handler) CheckKey(r *http.Request, key, grant string) (*auth.Identity, error) {
	return h.s.checkKey(r, key, grant)
}

// New returns the handler of the /api/ paths. v verifies the keys
// presented; m performs the key operations and should hold v
// (auth.NewManager(st, v)) so that a key deleted or changed through the API
// is refused at once on this node.
func New(cfg Config, st store.Store, v *auth.Verifier, m *auth.Manager) *Handler {
	s := &server{
		selector: cfg.DKIMSelector,
		st:       st,
		v:        v,
		m:        m,
		log:      cfg.Logger,
		quota:    cfg.Limits,
		subs:     subaccounts.New(st, m, v),
		supp:     suppression.New(st, cfg.Suppressions),
		doms:     domains.New(st, cfg.DNSResolver),
		hooks:    cfg.Webhooks,
	}
	if s.hooks == nil {
		s.hooks = webhooks.NewManager(webhooks.Config{}, st)
	}
	if s.selector == "" {
		s.selector = DefaultDKIMSelector
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}

	mux := http.NewServeMux()
	s.route(mux, "/api/v1/api-keys", auth.GrantAPIKeysManage, methods{
		http.MethodGet:  s.listKeys,
		http.MethodPost: s.createKey,
	})
	s.route(mux, "/api/v1/api-keys/{id}", auth.GrantAPIKeysManage, methods{
		http.MethodGet:    s.getKey,
		http.MethodPut:    s.updateKey,
		http.MethodDelete: s.deleteKey,
	})
	s.route(mux, "/api/v1/audit", auth.GrantAPIKeysManage, methods{http.MethodGet: s.auditLog})
	s.route(mux, "/api/v1/api-keys/{id}/rotate", auth.GrantAPIKeysManage, methods{
		http.MethodPost: s.rotateKey,
	})
	s.route(mux, "/api/v1/subaccounts/{id}/limits", auth.GrantAPIKeysManage, methods{
		http.MethodGet: s.getSubaccountLimits,
		http.MethodPut: s.putSubaccountLimits,
	})
	s.route(mux, "/api/v1/authenticate", "", methods{http.MethodGet: s.whoami})
	s.route(mux, "/api/v1/authenticate/grants", "", methods{http.MethodGet: s.grants})
	s.route(mux, "/api/v1/events/message", auth.GrantEventsView, methods{http.MethodGet: s.events})
	s.route(mux, "/api/v1/message-events", auth.GrantEventsView, methods{http.MethodGet: s.events})
	s.route(mux, "/api/v1/sending-domains", auth.GrantDomainsManage, methods{
		http.MethodGet:  s.listDomains,
		http.MethodPost: s.createDomain,
	})
	s.route(mux, "/api/v1/sending-domains/{domain}", auth.GrantDomainsManage, methods{
		http.MethodGet:    s.getDomain,
		http.MethodPut:    s.updateDomain,
		http.MethodDelete: s.deleteDomain,
	})
	s.route(mux, "/api/v1/sending-domains/{domain}/verify", auth.GrantDomainsManage, methods{
		http.MethodPost: s.verifyDomain,
	})
	s.route(mux, "/api/v1/subaccounts", auth.GrantSubaccountsManage, methods{
		http.MethodGet:  s.listSubaccounts,
		http.MethodPost: s.createSubaccount,
	})
	s.route(mux, "/api/v1/suppression-list", auth.GrantSuppressionsManage, methods{
		http.MethodGet: s.searchSuppressions,
		http.MethodPut: s.upsertSuppressions,
	})
	s.route(mux, "/api/v1/suppression-list/{recipient}", auth.GrantSuppressionsManage, methods{
		http.MethodGet:    s.getSuppression,
		http.MethodPut:    s.upsertSuppression,
		http.MethodDelete: s.deleteSuppression,
	})
	s.route(mux, "/api/v1/subaccounts/{id}", auth.GrantSubaccountsManage, methods{
		http.MethodGet: s.getSubaccount,
		http.MethodPut: s.updateSubaccount,
	})
	s.routeWebhooks(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Message: "Resource not found",
			Description: fmt.Sprintf("no API at %s: see docs/api.md for the endpoints", r.URL.Path)})
	})
	return &Handler{s: s, mux: mux}
}

// handler serves one method of a path for an authenticated caller. It
// returns nil after writing its answer, or an error for [server.fail].
type handler func(w http.ResponseWriter, r *http.Request, c *caller) error

// methods maps HTTP methods to the handlers of one path.
type methods map[string]handler

// caller is the verified key of a request and the accounts it acts for.
type caller struct {
	id     *auth.Identity
	scope  scope
	client netip.Addr
}

// scope is the set of accounts a request acts for.
type scope struct {
	// all: every account (a master key without X-MSYS-SUBACCOUNT).
	all bool
	// sub is the one account acted for when not all (0: master account).
	sub int64
}

// has reports whether objects of subaccount sub are in the scope.
func (s scope) has(sub int64) bool { return s.all || s.sub == sub }

// owner is the account new objects belong to: the scoped subaccount, or the
// master account for an unscoped master request.
func (s scope) owner() int64 {
	if s.all {
		return 0
	}
	return s.sub
}

// route registers pattern and pattern + "/" (SparkPost treats /x and /x/ the
// same) with authentication for grant ("": any valid key).
func (s *server) route(mux *http.ServeMux, pattern, grant string, ms methods) {
	allow := make([]string, 0, len(ms))
	for m := range ms {
		allow = append(allow, m)
	}
	sort.Strings(allow)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hf, ok := ms[r.Method]
		if !ok {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, &Error{Status: http.StatusMethodNotAllowed, Message: "Method not allowed",
				Description: fmt.Sprintf("%s does not serve %s: use %s", r.URL.Path, r.Method, strings.Join(allow, ", "))})
			return
		}
		c, err := s.authenticate(r, grant)
		if err == nil {
			ctx, cancel := context.WithTimeout(actorContext(r, c), storeTimeout)
			defer cancel()
			err = hf(w, r.WithContext(ctx), c)
		}
		if err != nil {
			s.fail(w, r, err)
		}
	})
	mux.Handle(pattern, h)
	mux.Handle(pattern+"/{$}", h)
}

// actorContext returns r's context carrying the caller as the actor of
// the changes the request makes (package audit). The frontend is "api",
// unless the request's context already names one (the console serving the
// API in-process marks its requests "console").
func actorContext(r *http.Request, c *caller) context.Context {
	via := audit.ViaAPI
	if a, ok := audit.ActorFrom(r.Context()); ok && a.Via != "" {
		via = a.Via
	}
	a := audit.Actor{Via: via, KeyID: c.id.KeyID, ShortKey: c.id.ShortKey}
	if c.client.IsValid() {
		a.IP = c.client.String()
	}
	return audit.WithActor(r.Context(), a)
}

// RequestKey returns the API key of an HTTP request: the Authorization
// header's value as is (SparkPost's form), after "Bearer ", or the user
// name of HTTP Basic authentication (SparkPost's other form). "" if none.
func RequestKey(r *http.Request) string {
	if user, _, ok := r.BasicAuth(); ok {
		return strings.TrimSpace(user)
	}
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if len(h) > len("bearer ") && strings.EqualFold(h[:len("bearer ")], "bearer ") {
		return strings.TrimSpace(h[len("bearer "):])
	}
	return h
}

// clientAddr returns the TCP peer address of r.
func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Errors answered by authenticate.
var (
	errNoKey = &Error{Status: http.StatusUnauthorized, Message: "Unauthorized.",
		Description: "send an API key in the Authorization header"}
	errBadKey = &Error{Status: http.StatusUnauthorized, Message: "Unauthorized.",
		Description: "the API key is unknown, deleted, expired, or not allowed from this address"}
)

// throttled is the answer to a client address that used up its
// failed-authentication budget (shared with SMTP AUTH and /metrics): 429
// with Retry-After.
func throttled(retryAfter time.Duration) *Error {
	return &Error{Status: http.StatusTooManyRequests, Message: "Too many failed authentications",
		Description: "too many requests with a wrong API key came from this address: try again later",
		RetryAfter:  retryAfter}
}

// RetryAfterSeconds is d in whole seconds, rounded up, at least 1: the
// value of a Retry-After header.
func RetryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}

// authenticate verifies the request's key for grant and works out its
// scope.
func (s *server) authenticate(r *http.Request, grant string) (*caller, error) {
	id, err := s.checkKey(r, RequestKey(r), grant)
	if err != nil {
		return nil, err
	}
	c := &caller{id: id, client: clientAddr(r)}
	h := strings.TrimSpace(r.Header.Get(subaccountHeader))
	var n int64
	if h != "" {
		if n, err = strconv.ParseInt(h, 10, 64); err != nil || n < 0 {
			return nil, badRequest("%s must be a subaccount id (0 for the master account), not %q", subaccountHeader, h)
		}
	}
	switch {
	case id.Subaccount != 0:
		if h != "" && n != id.Subaccount {
			return nil, &Error{Status: http.StatusForbidden, Message: "Forbidden.",
				Description: fmt.Sprintf("this API key belongs to subaccount %d and acts for it only", id.Subaccount)}
		}
		c.scope = scope{sub: id.Subaccount}
	case h != "":
		c.scope = scope{sub: n}
	default:
		c.scope = scope{all: true}
	}
	return c, nil
}

// checkKey is [Handler.CheckKey]: the throttle, then the key verified for
// grant, a refusal counted against the client address.
func (s *server) checkKey(r *http.Request, key, grant string) (*auth.Identity, error) {
	client := clientAddr(r)
	if d, blocked := s.v.Blocked(client); blocked {
		return nil, throttled(d)
	}
	if key == "" {
		return nil, errNoKey
	}
	id, err := s.v.VerifyGrant(r.Context(), key, client, grant)
	var (
		refused *auth.Error
		thr     *auth.ThrottledError
	)
	switch {
	case errors.As(err, &thr):
		return nil, throttled(thr.RetryAfter)
	case errors.As(err, &refused) && errors.Is(err, auth.ErrMissingGrant):
		s.log.Info("api: refused", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", err)
		return nil, &Error{Status: http.StatusForbidden, Message: "Forbidden.",
			Description: fmt.Sprintf("this API key lacks the %s grant", grant)}
	case refused != nil:
		// VerifyGrant spent one failure of the client's budget.
		s.log.Info("api: refused", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", err)
		return nil, errBadKey
	case err != nil:
		return nil, fmt.Errorf("authenticate: %w", err)
	}
	return id, nil
}

// Error is an answer other than success: an HTTP status and SparkPost's
// error object.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Message is a short, fixed text.
	Message string
	// Description says what was wrong and how to fix it.
	Description string
	// Field names the request field at fault, when one is ("domain"); the
	// web console shows the error beside it.
	Field string
	// RetryAfter, when positive, is sent as a Retry-After header.
	RetryAfter time.Duration
}

// Error returns the description.
func (e *Error) Error() string { return e.Message + ": " + e.Description }

// badRequest returns a 400 error with a formatted description.
func badRequest(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Message: "Invalid request", Description: fmt.Sprintf(format, args...)}
}

// invalid returns a 422 error: well-formed input with values refused.
func invalid(format string, args ...any) *Error {
	return &Error{Status: http.StatusUnprocessableEntity, Message: "Invalid data", Description: fmt.Sprintf(format, args...)}
}

// fieldInvalid is invalid naming the field at fault.
func fieldInvalid(field, format string, args ...any) *Error {
	e := invalid(format, args...)
	e.Field = field
	return e
}

// notFound returns a 404 error naming what was not found.
func notFound(format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Message: "Resource not found", Description: fmt.Sprintf(format, args...)}
}

// fail answers err: an [*Error] as it is; a store that does not answer
// 503; anything else 500 with an id under which the cause is logged (the
// cause itself is not shown to the client).
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if errors.As(err, &e) {
		writeError(w, e)
		return
	}
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("api: store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "5")
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Message: "Service unavailable",
			Description: "the database does not answer: try again later"})
		return
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	id := store.NewKeyID()
	s.log.Error("api: internal error", "id", id, "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, &Error{Status: http.StatusInternalServerError, Message: "Internal error",
		Description: "internal error (id " + id + "): the gateway's log has the cause"})
}

// errorBody is SparkPost's error answer.
type errorBody struct {
	Errors []errorItem `json:"errors"`
}

type errorItem struct {
	Message     string `json:"message"`
	Description string `json:"description,omitempty"`
}

func writeError(w http.ResponseWriter, e *Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", RetryAfterSeconds(e.RetryAfter))
	}
	writeJSON(w, e.Status, errorBody{Errors: []errorItem{{Message: e.Message, Description: e.Description}}})
}

// results is SparkPost's success answer.
type results struct {
	Results any `json:"results"`
}

// writeResults answers 200 with {"results": v}.
func writeResults(w http.ResponseWriter, v any) {
	writeJSON(w, http.StatusOK, results{Results: v})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own types are written; they always marshal.
		b = []byte(`{"errors":[{"message":"Internal error"}]}`)
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n')) // a client that went away is not our error
}

// decode reads r's JSON body into dst. Unknown fields are ignored, as in
// SparkPost; anything else that is not one JSON object is a 400 naming the
// problem.
func decode(w http.ResponseWriter, r *http.Request, dst any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	err := dec.Decode(dst)
	if err == nil && dec.More() {
		err = errors.New("data after the JSON object")
	}
	if err == nil {
		return nil
	}
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return badRequest("the request body is empty: send a JSON object")
	case errors.As(err, &tooBig):
		return &Error{Status: http.StatusRequestEntityTooLarge, Message: "Request too large",
			Description: fmt.Sprintf("the request body is over %d bytes", maxBody)}
	case errors.As(err, &syntax):
		return badRequest("the request body is not valid JSON: %v (at byte %d)", syntax, syntax.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badRequest("the request body must be a JSON object, not %s", typ.Value)
		}
		return badRequest("field %s must be %s, not %s", typ.Field, jsonType(typ.Type.Kind().String()), typ.Value)
	default:
		return badRequest("the request body is not valid JSON: %v", err)
	}
}

// jsonType names a Go kind as the JSON type a client should send.
func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "bool":
		return "true or false"
	case "struct", "map":
		return "an object"
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "a number"
	}
	return kind
}
