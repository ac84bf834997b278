package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// engine holds the page templates, parsed once: each page's file with the
// shared layout and partials.
type engine struct {
	pages map[string]*template.Template
}

var funcs = template.FuncMap{
	// when formats a time for tables; "" for the zero time.
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"join":     strings.Join,
	"enforced": auth.IsEnforced,
	// firstN and moreThan show a long list as its first n items and a count.
	"firstN": func(n int, xs []string) []string {
		if len(xs) > n {
			return xs[:n]
		}
		return xs
	},
	"rest": func(n int, xs []string) int { return max(len(xs)-n, 0) },
	"firstRcpts": func(rs []*store.Recipient) []*store.Recipient {
		if len(rs) > 3 {
			return rs[:3]
		}
		return rs
	},
	"rcptAddrs": func(rs []*store.Recipient) []string {
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.Address
		}
		return out
	},
	"has": func(xs []string, x string) bool {
		for _, v := range xs {
			if v == x {
				return true
			}
		}
		return false
	},
}

func newEngine() (*engine, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	e := &engine{pages: map[string]*template.Template{}}
	for _, n := range names {
		name := strings.TrimPrefix(n, "templates/")
		if name == "layout.html" || name == "partials.html" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS,
			"templates/layout.html", "templates/partials.html", n)
		if err != nil {
			return nil, fmt.Errorf("parse template %s: %w", name, err)
		}
		e.pages[strings.TrimSuffix(name, ".html")] = t
	}
	return e, nil
}

// view is what every page template gets.
type view struct {
	// Title is the page title; Nav the section highlighted in the menu.
	Title, Nav string
	// Me is the signed-in key (nil on the sign-in page).
	Me *auth.Identity
	// CSRF is the token every form posts back.
	CSRF string
	// Notice is a fixed message about the last action ("Key updated.").
	Notice string
	// ReplaceURL, if set, replaces the page's address in the history (the
	// one-time key page: a reload shows the list, not the key).
	ReplaceURL string
	// D is the page's own data.
	D any
}

// notices are the messages ?done= may select: a fixed set, so no user
// string travels in the URL.
var notices = map[string]string{
	"key-updated":    "The API key was updated.",
	"key-deleted":    "The API key was deleted. It is refused from now on.",
	"domain-added":   "The sending domain was added. Publish its DKIM record below.",
	"domain-deleted": "The sending domain was deleted.",
	"retried":        "The message's waiting recipients will be tried again now.",
	"msg-deleted":    "The message was deleted from the queue.",
	"signedout":      "You are signed out.",
}

// render writes page name with status. The page is rendered into a buffer
// first, so a template error is a clean 500.
func (s *Server) render(w http.ResponseWriter, r *http.Request, se *session, status int, name string, v *view) {
	t := s.views.pages[name]
	if se != nil {
		v.Me, v.CSRF = se.id, se.csrf()
	}
	if v.Notice == "" {
		v.Notice = notices[r.URL.Query().Get("done")]
	}
	var buf bytes.Buffer
	if t == nil {
		s.log.Error("console: no template", "name", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if err := t.Execute(&buf, v); err != nil {
		s.log.Error("console: render", "page", name, "err", err)
		http.Error(w, "internal error: the gateway's log has the cause", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes()) // a browser that went away is not our error
}

// renderError shows a message on an error page.
func (s *Server) renderError(w http.ResponseWriter, r *http.Request, se *session, status int, msg string) {
	s.render(w, r, se, status, "error", &view{Title: http.StatusText(status), D: msg})
}

// staticHandler serves the embedded CSS, JavaScript and images.
func staticHandler() http.Handler {
	sub, _ := fs.Sub(staticFS, "static") // "static" exists: it is embedded
	files := http.StripPrefix("/static/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	})
}
