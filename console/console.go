// Package console serves smtpgw's web console: server-rendered pages at /
// on the HTTP listener where an admin manages API keys, sending domains
// and the queue, and searches message events, as SparkPost's admins do.
//
// The contract:
//
//   - Sign-in takes an API key holding api_keys/manage, checked exactly as
//     an API request's key (the [KeyChecker] is the API's: allowed IPs,
//     and the per-address budget of failed authentications).
//   - The browser keeps only an opaque session id (32 random bytes) in the
//     cookie smtpgw_session: HttpOnly, SameSite=Strict, Secure over HTTPS.
//     Sessions live in the store (store.SessionStore) under the SHA-256 of
//     that id, with the SHA-256 of the key that signed in, so every node
//     sharing the store serves them. A session ends after Config.IdleTimeout
//     without a request, on sign-out, and as soon as its key is deleted,
//     loses api_keys/manage or no longer allows the client address: every
//     request checks the key again with [auth.Verifier.VerifyHash] — at once
//     on the node that made the change, within auth.cache_ttl on the others.
//   - A subaccount's key sees and manages only its subaccount; a master
//     account key sees every account.
//   - Every POST carries a CSRF token, compared in constant time: an HMAC
//     of the session id, or before sign-in a random value doubled in a
//     cookie. Every answer has a strict Content-Security-Policy (no inline
//     script or style), X-Frame-Options: DENY, Referrer-Policy: no-referrer,
//     X-Content-Type-Options: nosniff; pages are never cached
//     (Cache-Control: no-store). Templates escape every string (html/template).
//   - Changes go through the operations the HTTP API uses — [auth.Manager]
//     for keys, [api.CreateDomain] for sending domains, the store for the
//     queue — with an [audit.Actor] (via "console", the acting key, the
//     client address) in the context, so the rules and the audit log are
//     the API's.
//   - A new key is shown once, in the answer to the POST that created it;
//     it is never put in a URL, a cookie, the session, a log line or any
//     later page.
//
// Assets (templates, CSS, JavaScript) are embedded; templates are parsed
// once, at [New].
package console

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
)

const (
	// DefaultIdleTimeout ends a session after this long without a request
	// when Config.IdleTimeout is zero.
	DefaultIdleTimeout = 30 * time.Minute
	// storeTimeout bounds the store calls of one request.
	storeTimeout = 30 * time.Second
	// touchEvery: a session's last request is written at most this often.
	touchEvery = time.Minute
)

// ContentSecurityPolicy is sent with every answer: only the console's own
// scripts, styles and images; no inline script; no framing; forms post to
// the console only.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// KeyChecker checks an API key presented by a request for a grant, as the
// HTTP API checks its requests' keys (api.Handler implements it). Refusals
// are errors with a Description for the user (*api.Error).
type KeyChecker interface {
	CheckKey(r *http.Request, key, grant string) (*auth.Identity, error)
}

// Config configures the console.
type Config struct {
	// IdleTimeout ends a session after this long without a request; 0
	// means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// DKIMSelector is the selector of new sending domains' DKIM keys
	// (relay.dkim_selector); "" means the API's default.
	DKIMSelector string
	// Logger receives sign-ins, sign-outs, changes (at INFO, never a key)
	// and faults (at ERROR). Nil discards.
	Logger *slog.Logger
}

// Server is the console's http.Handler.
type Server struct {
	idle     time.Duration
	selector string
	log      *slog.Logger
	st       store.Store
	v        *auth.Verifier
	m        *auth.Manager
	kc       KeyChecker
	views    *engine
	mux      *http.ServeMux
}

// New returns the console. st should be the store the API uses (wrapped
// by audit.Wrap), v the Verifier of every API request, m a Manager holding
// v, and kc the API's key check.
func New(cfg Config, st store.Store, v *auth.Verifier, m *auth.Manager, kc KeyChecker) (*Server, error) {
	views, err := newEngine()
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	s := &Server{idle: cfg.IdleTimeout, selector: cfg.DKIMSelector, log: cfg.Logger,
		st: st, v: v, m: m, kc: kc, views: views, mux: http.NewServeMux()}
	if s.idle <= 0 {
		s.idle = DefaultIdleTimeout
	}
	if s.selector == "" {
		s.selector = "smtpgw"
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.routes()
	return s, nil
}

// ServeHTTP implements http.Handler: the security headers, then the page.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-store") // the static files say otherwise
	s.mux.ServeHTTP(w, r)
}

// routes registers the pages. Pages behind sign-in are registered with
// s.page, which loads the session and checks the CSRF token of POSTs.
func (s *Server) routes() {
	s.mux.Handle("GET /static/", staticHandler())
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/keys", http.StatusSeeOther)
	})
	s.mux.HandleFunc("GET /signin", s.signInForm)
	s.mux.HandleFunc("POST /signin", s.signIn)
	s.page("POST /signout", s.signOut)

	s.page("GET /keys", s.keyList)
	s.page("GET /keys/new", s.keyCreate)
	s.page("POST /keys/new", s.keySave)
	s.page("GET /keys/{id}/edit", s.keyEdit)
	s.page("POST /keys/{id}/edit", s.keyUpdate)
	s.page("GET /keys/{id}/delete", s.keyRemoveConfirm)
	s.page("POST /keys/{id}/delete", s.keyRemove)

	s.page("GET /domains", s.domainList)
	s.page("POST /domains", s.domainSave)
	s.page("GET /domains/{name}", s.domainShow)
	s.page("GET /domains/{name}/delete", s.domainRemoveConfirm)
	s.page("POST /domains/{name}/delete", s.domainRemove)

	s.page("GET /queue", s.queueList)
	s.page("GET /queue/{id}", s.queueMessage)
	s.page("POST /queue/{id}/retry", s.queueRetry)
	s.page("GET /queue/{id}/delete", s.queueRemoveConfirm)
	s.page("POST /queue/{id}/delete", s.queueRemove)

	s.page("GET /events", s.eventSearch)

	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.renderError(w, r, nil, http.StatusNotFound, "There is no page at this address.")
	})
}

// pageFunc serves a page for a signed-in admin. It returns nil after
// writing its answer, or an error for [Server.fail].
type pageFunc func(w http.ResponseWriter, r *http.Request, se *session) error

// page registers a page behind sign-in: no session (or an ended one)
// redirects to the sign-in page; a POST without the session's CSRF token
// is refused with 403. The request's context carries the audit actor and
// a deadline for the store.
func (s *Server) page(pattern string, fn pageFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		se, ended, err := s.loadSession(r)
		if err != nil {
			s.fail(w, r, nil, err)
			return
		}
		if se == nil {
			clearSessionCookie(w, r)
			target := "/signin"
			if ended != "" {
				target += "?ended=" + ended
			}
			http.Redirect(w, r, target, http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !se.validCSRF(r.PostFormValue(csrfField)) {
			s.log.Info("console: refused POST without a valid CSRF token", "path", r.URL.Path,
				"remote", r.RemoteAddr, "key_id", se.id.KeyID)
			s.renderError(w, r, se, http.StatusForbidden,
				"This form was not sent by this console page (its security token is missing or wrong). Reload the page and try again.")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), storeTimeout)
		defer cancel()
		ctx = audit.WithActor(ctx, audit.Actor{Via: audit.ViaConsole, KeyID: se.id.KeyID,
			ShortKey: se.id.ShortKey, IP: se.client.String()})
		if err := fn(w, r.WithContext(ctx), se); err != nil {
			s.fail(w, r, se, err)
		}
	})
}

// fail answers an error no page handled: a store that does not answer is
// a 503, anything else a 500 with an id under which the cause is logged.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, se *session, err error) {
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("console: store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "5")
		s.renderError(w, r, se, http.StatusServiceUnavailable, "The database does not answer. Try again in a moment.")
		return
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the browser went away
	}
	id := store.NewKeyID()
	s.log.Error("console: internal error", "id", id, "method", r.Method, "path", r.URL.Path, "err", err)
	s.renderError(w, r, se, http.StatusInternalServerError,
		"Something went wrong on the gateway (error id "+id+"). Its log has the cause.")
}

// clientAddr returns the TCP peer address of r.
func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// seeOther redirects after a successful POST; done names a fixed notice
// the next page shows (never a user string).
func seeOther(w http.ResponseWriter, r *http.Request, path, done string) {
	if done != "" {
		path += "?done=" + done
	}
	http.Redirect(w, r, path, http.StatusSeeOther)
}
