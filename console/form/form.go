// Package form parses and checks the web console's forms. It only reads
// and shapes what was typed; the rules on the values (grant names,
// allowed-IP syntax, label length, subaccount ids) are auth's and api's,
// whose errors [Errors.Add] places beside the field they concern.
package form

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/auth"
)

// Field names of the key form, as the templates use them.
const (
	FieldName       = "name"
	FieldGrants     = "grants"
	FieldSubaccount = "subaccount"
	FieldAllowedIPs = "allowed_ips"
	FieldDomain     = "domain"
	FieldAlgorithm  = "dkim_algorithm"
	FieldShared     = "shared"
	FieldTime       = "from"
	FieldUntil      = "to"
)

// Errors maps a field to what is wrong with it.
type Errors map[string]string

// Add places err beside its field: an auth.ParamError or api.Error names
// one; anything else goes to "" (shown above the form).
func (e Errors) Add(err error) {
	var pe *auth.ParamError
	var ae *api.Error
	switch {
	case errors.As(err, &pe):
		e[keyField(pe.Field)] = capitalize(pe.Err.Error())
	case errors.As(err, &ae) && ae.Field != "":
		f := ae.Field
		if f == "shared_with_subaccounts" {
			f = FieldShared
		}
		e[f] = capitalize(ae.Description)
	case errors.As(err, &ae):
		e[""] = capitalize(ae.Description)
	default:
		e[""] = capitalize(err.Error())
	}
}

// keyField maps auth's parameter names to the form's.
func keyField(f string) string {
	switch f {
	case auth.FieldLabel:
		return FieldName
	case auth.FieldGrants:
		return FieldGrants
	case auth.FieldAllowedIPs:
		return FieldAllowedIPs
	case auth.FieldSubaccount:
		return FieldSubaccount
	}
	return ""
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// Key is the create and edit form of an API key, as typed.
type Key struct {
	Name       string
	Grants     []string
	Subaccount string
	AllowedIPs string
}

// ParseKey reads the key form of r.
func ParseKey(r *http.Request) Key {
	_ = r.ParseForm() // a malformed body leaves the fields empty: refused as such
	return Key{
		Name:       r.PostForm.Get(FieldName),
		Grants:     r.PostForm[FieldGrants],
		Subaccount: strings.TrimSpace(r.PostForm.Get(FieldSubaccount)),
		AllowedIPs: r.PostForm.Get(FieldAllowedIPs),
	}
}

// IPs splits the Allowed IPs field: addresses or CIDR prefixes separated
// by commas, spaces or line breaks. Their syntax is checked by auth.
func (k Key) IPs() []string {
	return strings.FieldsFunc(k.AllowedIPs, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t'
	})
}

// SubaccountID reads the Subaccount field: empty is the master account
// (0). A value that is not a whole number is added to errs.
func (k Key) SubaccountID(errs Errors) int64 {
	if k.Subaccount == "" {
		return 0
	}
	n, err := strconv.ParseInt(k.Subaccount, 10, 64)
	if err != nil {
		errs[FieldSubaccount] = fmt.Sprintf("%q is not a subaccount id: give a whole number, or leave it empty for the master account", k.Subaccount)
		return 0
	}
	return n
}

// Domain is the add form of a sending domain.
type Domain struct {
	Domain    string
	Algorithm string
	Shared    bool
}

// ParseDomain reads the domain form of r.
func ParseDomain(r *http.Request) Domain {
	_ = r.ParseForm()
	return Domain{
		Domain:    strings.TrimSpace(r.PostForm.Get(FieldDomain)),
		Algorithm: r.PostForm.Get(FieldAlgorithm),
		Shared:    r.PostForm.Get(FieldShared) != "",
	}
}

// Events is the event search form (a GET query).
type Events struct {
	Recipient string
	MessageID string
	Campaign  string
	Type      string
	// From and To are as typed (datetime-local values, UTC); Since and
	// Until are them parsed, zero if empty.
	From, To     string
	Since, Until time.Time
	// After is the cursor of the page asked for ("" for the first).
	After string
}

// ParseEvents reads the event search of r's query; a time that is not one
// is added to errs.
func ParseEvents(r *http.Request, errs Errors) Events {
	q := r.URL.Query()
	e := Events{
		Recipient: strings.TrimSpace(q.Get("recipient")),
		MessageID: strings.TrimSpace(q.Get("message_id")),
		Campaign:  strings.TrimSpace(q.Get("campaign")),
		Type:      strings.TrimSpace(q.Get("type")),
		From:      strings.TrimSpace(q.Get(FieldTime)),
		To:        strings.TrimSpace(q.Get(FieldUntil)),
		After:     q.Get("after"),
	}
	e.Since = parseTime(e.From, FieldTime, errs)
	e.Until = parseTime(e.To, FieldUntil, errs)
	return e
}

// parseTime parses a datetime-local value (UTC); "" is the zero time.
func parseTime(v, field string, errs Errors) time.Time {
	if v == "" {
		return time.Time{}
	}
	for _, l := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", time.RFC3339, "2006-01-02"} {
		if t, err := time.ParseInLocation(l, v, time.UTC); err == nil {
			return t
		}
	}
	errs[field] = fmt.Sprintf("%q is not a time: use YYYY-MM-DDTHH:MM (UTC)", v)
	return time.Time{}
}
