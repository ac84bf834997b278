// Package webhooks delivers message events to HTTP endpoints in SparkPost's
// webhook format, and manages the webhooks.
//
// Contract:
//
//   - Durable outbox. Events are already durable in the store's events
//     table; each webhook keeps a cursor into it. The dispatcher turns the
//     events after the cursor into a batch (up to Config.BatchSize events,
//     gathered every Config.BatchInterval) and stores the batch and the new
//     cursor in one transaction ([store.WebhookStore.DispatchWebhook]), so
//     every event is in exactly one batch of each webhook, whatever crashes.
//     On PostgreSQL an event waits until every older transaction on the
//     server has ended ([store.WebhookStore.WebhookHold]); when one held
//     events back for a minute, the service logs a warning naming it, every
//     minute until it ends.
//   - Delivery at least once. Workers claim due batches with a lease (FOR
//     UPDATE SKIP LOCKED on PostgreSQL, as the relay claims recipients), POST
//     them, and record each attempt. Two nodes never send a batch at once;
//     a batch is sent again only when its sender died mid-POST (the lease
//     ran out) or the target did not answer 2xx.
//   - Retries. A failed batch is retried after Config.RetryInitial (5 s),
//     doubling up to Config.RetryMax (1 h), until it is Config.MaxAge (8 h)
//     old; then it is marked failed. Each POST has Config.Timeout (10 s).
//   - Format. The body is SparkPost's: a JSON array of
//     {"msys":{"message_event":{...}}} with the event as the events API
//     shows it (package events); header X-MessageSystems-Batch-ID names the
//     batch (the same on every retry). Authentication: none, HTTP basic, or
//     OAuth 2 client credentials (token fetched, cached, refreshed on 401).
//     Beyond SparkPost, every POST is signed: header X-Smtpgw-Signature:
//     t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>" keyed with the
//     webhook's signing secret>.
//   - Targets. Unless Config.AllowPrivateTargets, connections to loopback,
//     private, link-local, CGNAT and cloud metadata addresses are refused
//     when they are made, after DNS (net.Dialer.Control), so a name that
//     resolves to 127.0.0.1 or 169.254.169.254 is refused too. Redirects are
//     not followed.
//
// Every change to a webhook goes through one function of [Manager]
// (Create, Update, Delete), so auditing has one place to hook. [Service]
// runs the dispatcher and the workers (Start/Stop).
package webhooks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/events"
	"github.com/smtpgw/smtpgw/store"
)

// Config configures webhook delivery. Zero fields take the defaults below.
type Config struct {
	// AllowPrivateTargets allows loopback, private and link-local targets.
	AllowPrivateTargets bool
	// RetryInitial is the first retry delay (default 5 s).
	RetryInitial time.Duration
	// RetryMax caps the retry delay (default 1 h).
	RetryMax time.Duration
	// MaxAge is how long a batch is retried (default 8 h).
	MaxAge time.Duration
	// Timeout bounds one POST (default 10 s).
	Timeout time.Duration
	// BatchSize is the most events per batch (default 1000).
	BatchSize int
	// BatchInterval is how often events are gathered (default 1 s).
	BatchInterval time.Duration
	// Workers is how many batches are POSTed at once (default 8).
	Workers int
	// Node names this gateway in batch-status (default the host name).
	Node string
	// Logger receives delivery failures and faults; nil discards.
	Logger *slog.Logger
}

func (c *Config) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.RetryInitial, 5*time.Second)
	set(&c.RetryMax, time.Hour)
	set(&c.MaxAge, 8*time.Hour)
	set(&c.Timeout, 10*time.Second)
	set(&c.BatchInterval, time.Second)
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Auth types.
const (
	AuthNone   = "none"
	AuthBasic  = "basic"
	AuthOAuth2 = "oauth2"
)

// authDetails is what a webhook stores about its authentication: SparkPost's
// auth_request_details.
type authDetails struct {
	// basic
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// oauth2: the token endpoint and the form fields sent to it
	// (client_id, client_secret, and anything else given).
	URL  string            `json:"url,omitempty"`
	Body map[string]string `json:"body,omitempty"`
}

// Input is a webhook as a client creates or changes it, with SparkPost's
// field names. Nil fields are left as they are by Update.
type Input struct {
	Name               *string            `json:"name"`
	Target             *string            `json:"target"`
	Events             *[]string          `json:"events"`
	Active             *bool              `json:"active"`
	AuthType           *string            `json:"auth_type"`
	AuthRequestDetails *authDetails       `json:"auth_request_details"`
	CustomHeaders      *map[string]string `json:"custom_headers"`
	// SigningSecret replaces the HMAC secret (smtpgw's addition); at
	// least 16 characters. Create generates one when absent.
	SigningSecret *string `json:"signing_secret"`
}

// Error is a client mistake: its text says what was wrong and how to fix it.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func errorf(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

// IsClientError reports whether err is an [Error].
func IsClientError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// apply validates in and writes it over w.
func (in *Input) apply(w *store.Webhook) error {
	if in.Name != nil {
		n := strings.TrimSpace(*in.Name)
		if n == "" || len(n) > 1024 {
			return errorf("name must be 1 to 1024 characters")
		}
		w.Name = n
	}
	if in.Target != nil {
		u, err := url.Parse(*in.Target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || len(*in.Target) > 2048 {
			return errorf("target %q is not an http or https URL without credentials (e.g. https://hooks.example.com/sparkpost)", *in.Target)
		}
		w.Target = u.String()
	}
	if in.Events != nil {
		evs := []string{}
		for _, e := range *in.Events {
			if !slices.Contains(events.Types, e) {
				return errorf("events: unknown event type %q; smtpgw records %s", e, strings.Join(events.Recorded, ", "))
			}
			if !slices.Contains(evs, e) {
				evs = append(evs, e)
			}
		}
		w.Events = evs
	}
	if in.Active != nil {
		w.Active = *in.Active
	}
	var details authDetails
	if len(w.Auth) > 0 {
		if err := json.Unmarshal(w.Auth, &details); err != nil {
			return fmt.Errorf("webhook %s: stored auth: %w", w.ID, err)
		}
	}
	if in.AuthType != nil {
		switch *in.AuthType {
		case AuthNone, AuthBasic, AuthOAuth2:
		default:
			return errorf("auth_type %q is not one of none, basic, oauth2", *in.AuthType)
		}
		if *in.AuthType != w.AuthType {
			details = authDetails{}
		}
		w.AuthType = *in.AuthType
	}
	if in.AuthRequestDetails != nil {
		details = *in.AuthRequestDetails
	}
	switch w.AuthType {
	case AuthBasic:
		if details.Username == "" || strings.Contains(details.Username, ":") {
			return errorf("auth_request_details.username is required for auth_type basic and may not contain ':'")
		}
		details.URL, details.Body = "", nil
	case AuthOAuth2:
		u, err := url.Parse(details.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errorf("auth_request_details.url must be the http(s) URL of the OAuth 2 token endpoint for auth_type oauth2")
		}
		if details.Body["client_id"] == "" || details.Body["client_secret"] == "" {
			return errorf("auth_request_details.body needs client_id and client_secret for auth_type oauth2")
		}
		details.Username, details.Password = "", ""
	default:
		w.AuthType = AuthNone
		details = authDetails{}
	}
	b, err := json.Marshal(details)
	if err != nil {
		return err
	}
	w.Auth = b
	if in.CustomHeaders != nil {
		for k, v := range *in.CustomHeaders {
			if !validHeaderName(k) || strings.ContainsAny(v, "\r\n\x00") || reservedHeader(k) {
				return errorf("custom_headers: %q is not a header this gateway may set (a token name, not Authorization, Content-Type, Host or X-MessageSystems-/X-Smtpgw-)", k)
			}
		}
		h, err := json.Marshal(*in.CustomHeaders)
		if err != nil {
			return err
		}
		w.Headers = h
	}
	if in.SigningSecret != nil {
		if len(*in.SigningSecret) < 16 || len(*in.SigningSecret) > 256 {
			return errorf("signing_secret must be 16 to 256 characters")
		}
		w.Secret = *in.SigningSecret
	}
	return nil
}

func validHeaderName(k string) bool {
	if k == "" || len(k) > 128 {
		return false
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)) {
			return false
		}
	}
	return true
}

func reservedHeader(k string) bool {
	k = strings.ToLower(k)
	switch k {
	case "authorization", "content-type", "content-length", "host", "user-agent", "transfer-encoding", "connection":
		return true
	}
	return strings.HasPrefix(k, "x-messagesystems-") || strings.HasPrefix(k, "x-smtpgw-")
}

// newID returns 32 lowercase hex characters from crypto/rand.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Manager performs the webhook operations of the API and the CLI.
type Manager struct {
	st     store.Store
	sender *Sender
}

// NewManager returns a Manager; cfg decides which targets the test POSTs
// of Create and Validate may reach.
func NewManager(cfg Config, st store.Store) *Manager {
	cfg.defaults()
	return &Manager{st: st, sender: NewSender(cfg)}
}

// Create validates in, sends SparkPost's test batch [{"msys":{}}] to the
// target (it must answer 2xx, as SparkPost requires), and stores the
// webhook for subaccount sub (nil: the master account and every
// subaccount). The webhook gets the events recorded from now on. A new
// signing secret is generated unless in has one; the returned webhook
// holds it.
func (m *Manager) Create(ctx context.Context, sub *int64, in Input) (*store.Webhook, error) {
	if in.Name == nil || in.Target == nil {
		return nil, errorf("name and target are required")
	}
	w := &store.Webhook{ID: newID(), Subaccount: sub, Active: true, AuthType: AuthNone}
	if err := in.apply(w); err != nil {
		return nil, err
	}
	if w.Secret == "" {
		w.Secret = "whsec_" + newID()
	}
	res := m.sender.Post(ctx, w, "validate-"+newID(), []byte(`[{"msys":{}}]`))
	if !res.OK() {
		return nil, errorf("the target did not accept the test POST [{\"msys\":{}}] (%s): make it answer 2xx, then create the webhook", res.Summary())
	}
	if err := m.st.CreateWebhook(ctx, w); err != nil {
		return nil, fmt.Errorf("create webhook: %w", err)
	}
	return w, nil
}

// Update applies in to webhook id. It does not test the target; use
// Validate.
func (m *Manager) Update(ctx context.Context, id string, in Input) (*store.Webhook, error) {
	w, err := m.st.GetWebhook(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := in.apply(w); err != nil {
		return nil, err
	}
	m.sender.forgetToken(id)
	if err := m.st.UpdateWebhook(ctx, w); err != nil {
		return nil, fmt.Errorf("update webhook: %w", err)
	}
	return w, nil
}

// Delete deletes webhook id, with its pending batches.
func (m *Manager) Delete(ctx context.Context, id string) error {
	m.sender.forgetToken(id)
	return m.st.DeleteWebhook(ctx, id)
}

// Validate POSTs message to the webhook's target as a batch of one
// element (an array is sent as it is); nil sends [{"msys":{}}].
func (m *Manager) Validate(ctx context.Context, w *store.Webhook, message json.RawMessage) Result {
	body := []byte(`[{"msys":{}}]`)
	if t := strings.TrimSpace(string(message)); t != "" && t != "null" {
		if strings.HasPrefix(t, "[") {
			body = []byte(t)
		} else {
			body = []byte("[" + t + "]")
		}
	}
	return m.sender.Post(ctx, w, "validate-"+newID(), body)
}

// BatchStatus returns the webhook's delivery attempts, newest first.
func (m *Manager) BatchStatus(ctx context.Context, id string, limit int) ([]store.WebhookAttempt, error) {
	return m.st.WebhookAttempts(ctx, id, limit)
}

// Render builds the batch body of evs for w: SparkPost's array of
// {"msys":{"message_event":{...}}}, the events w asks for only. It
// returns nil when none of evs is for w.
func Render(w *store.Webhook, evs []store.Event) ([]byte, int, error) {
	type msys struct {
		MessageEvent events.Event `json:"message_event"`
	}
	type item struct {
		Msys msys `json:"msys"`
	}
	var out []item
	for _, ev := range evs {
		if len(w.Events) > 0 && !slices.Contains(w.Events, ev.Type) {
			continue
		}
		if w.Subaccount != nil && *w.Subaccount != ev.Subaccount {
			continue
		}
		out = append(out, item{Msys: msys{MessageEvent: events.New(ev)}})
	}
	if len(out) == 0 {
		return nil, 0, nil
	}
	b, err := json.Marshal(out)
	return b, len(out), err
}
