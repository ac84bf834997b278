package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
)

const (
	// sessionCookie holds the session id.
	sessionCookie = "smtpgw_session"
	// signInCookie holds the sign-in form's CSRF token (double submit).
	signInCookie = "smtpgw_signin"
	// csrfField is the form field of the CSRF token.
	csrfField = "csrf_token"
)

// Reasons a session ended, shown on the sign-in page (?ended=).
const (
	endedIdle    = "idle"
	endedRevoked = "key"
)

// session is the signed-in admin of a request.
type session struct {
	raw    string // the session id from the cookie
	hash   []byte // its SHA-256, the store's key
	id     *auth.Identity
	client netip.Addr
}

// csrf returns the session's CSRF token: an HMAC of the session id, so it
// needs no storage and changes with every sign-in.
func (se *session) csrf() string {
	mac := hmac.New(sha256.New, []byte(se.raw))
	mac.Write([]byte("smtpgw console csrf"))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// validCSRF compares a submitted token with the session's in constant time.
func (se *session) validCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(se.csrf())) == 1
}

// scoped reports whether objects of subaccount sub are the admin's.
func (se *session) scoped(sub int64) bool {
	return se.id.Subaccount == 0 || se.id.Subaccount == sub
}

// scope is the subaccount filter of the admin's store queries: nil (every
// account) for a master-account key.
func (se *session) scope() *int64 {
	if se.id.Subaccount == 0 {
		return nil
	}
	n := se.id.Subaccount
	return &n
}

// newToken returns 32 random bytes, base64url.
func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(t string) []byte {
	h := sha256.Sum256([]byte(t))
	return h[:]
}

// loadSession returns the request's session, or nil and why it ended
// (endedIdle, endedRevoked, "" if there was none). Errors are store
// faults.
func (s *Server) loadSession(r *http.Request) (*session, string, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil, "", nil
	}
	se := &session{raw: c.Value, hash: hashToken(c.Value), client: clientAddr(r)}
	ctx := r.Context()
	stored, err := s.st.GetSession(ctx, se.hash)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("load session: %w", err)
	}
	now := time.Now()
	if now.Sub(stored.LastSeenAt) > s.idle {
		s.endSession(r, se.hash)
		return nil, endedIdle, nil
	}
	id, err := s.v.VerifyHash(ctx, stored.KeyHash, se.client, auth.GrantAPIKeysManage)
	var refused *auth.Error
	if errors.As(err, &refused) {
		s.log.Info("console: session ended", "reason", err, "remote", r.RemoteAddr)
		s.endSession(r, se.hash)
		return nil, endedRevoked, nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("load session: %w", err)
	}
	se.id = id
	if now.Sub(stored.LastSeenAt) > touchEvery {
		if err := s.st.TouchSession(ctx, se.hash, now); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("console: record session activity", "err", err)
		}
	}
	return se, "", nil
}

// endSession deletes a session from the store; a failure is logged (the
// cookie is cleared anyway, and idle expiry ends it later).
func (s *Server) endSession(r *http.Request, hash []byte) {
	if err := s.st.DeleteSession(r.Context(), hash); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("console: end session", "err", err)
	}
}

// startSession stores a new session for the key that signed in and sets
// its cookie.
func (s *Server) startSession(w http.ResponseWriter, r *http.Request, key string, id *auth.Identity) error {
	// Sessions left idle are deleted here rather than by a loop of their
	// own; so is the browser's previous session, if it had one.
	if n, err := s.st.PruneSessions(r.Context(), time.Now().Add(-s.idle)); err != nil {
		s.log.Warn("console: prune idle sessions", "err", err)
	} else if n > 0 {
		s.log.Debug("console: idle sessions pruned", "count", n)
	}
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		s.endSession(r, hashToken(c.Value))
	}
	raw := newToken()
	err := s.st.CreateSession(r.Context(), &store.Session{IDHash: hashToken(raw), KeyID: id.KeyID,
		KeyHash: auth.HashKey(key), ClientIP: clientAddr(r).String()})
	if err != nil {
		return fmt.Errorf("start session: %w", err)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: raw, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	return nil
}

// clearSessionCookie removes the session cookie from the browser.
func clearSessionCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}
