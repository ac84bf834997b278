package smtpd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MsysAPIHeader is the header field through which SMTP clients pass
// SparkPost-style options for one message. It is removed from the stored
// message.
const MsysAPIHeader = "X-Msys-Api"

// maxCampaignID is SparkPost's limit on campaign_id, in bytes.
const maxCampaignID = 64

// MsysAPI is a parsed X-MSYS-API header. Its JSON encoding (see Encode) is
// what is stored in store.Message.MsysAPI. Unknown fields of the header are
// dropped.
type MsysAPI struct {
	// CampaignID groups messages in events; at most 64 bytes.
	CampaignID string `json:"campaign_id,omitempty"`
	// Metadata is a JSON object reported with every event of the message,
	// kept compact as encoding/json writes it.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// Tags are reported with every event of the message.
	Tags []string `json:"tags,omitempty"`
	// Cc are extra envelope recipients (SparkPost's cc).
	Cc []string `json:"cc,omitempty"`
	// Bcc are extra envelope recipients (SparkPost's bcc).
	Bcc []string `json:"bcc,omitempty"`
	// Archive are extra envelope recipients (SparkPost's archive copies).
	Archive []string `json:"archive,omitempty"`
	// Options are per-message sending options; nil if the header had none.
	Options *MsysOptions `json:"options,omitempty"`
}

// MsysOptions is the "options" object of X-MSYS-API. A nil field was not
// given, so the account default applies.
type MsysOptions struct {
	// OpenTracking enables the open-tracking pixel.
	OpenTracking *bool `json:"open_tracking,omitempty"`
	// ClickTracking enables link rewriting.
	ClickTracking *bool `json:"click_tracking,omitempty"`
	// Transactional marks the message as transactional (not subject to
	// list-unsubscribe handling).
	Transactional *bool `json:"transactional,omitempty"`
	// SkipSuppression delivers even to suppressed recipients.
	SkipSuppression *bool `json:"skip_suppression,omitempty"`
	// InlineCSS asks for CSS inlining.
	InlineCSS *bool `json:"inline_css,omitempty"`
	// Sandbox marks a test message.
	Sandbox *bool `json:"sandbox,omitempty"`
	// IPPool names the dedicated IP pool to send from.
	IPPool string `json:"ip_pool,omitempty"`
	// DKIMKey names the DKIM key (domain) to sign with.
	DKIMKey string `json:"dkim_key,omitempty"`
}

// MsysAPIError says why an X-MSYS-API header was refused. Its text is safe
// to show to the client (550 5.6.0 Invalid X-MSYS-API header: <why>).
type MsysAPIError struct {
	Why string
}

func (e *MsysAPIError) Error() string { return "invalid X-MSYS-API header: " + e.Why }

func msysErrorf(format string, args ...any) error {
	return &MsysAPIError{Why: fmt.Sprintf(format, args...)}
}

// Recipients returns the extra envelope recipients the header asks for:
// cc, then bcc, then archive.
func (m *MsysAPI) Recipients() []string {
	n := len(m.Cc) + len(m.Bcc) + len(m.Archive)
	if n == 0 {
		return nil
	}
	out := make([]string, 0, n)
	out = append(out, m.Cc...)
	out = append(out, m.Bcc...)
	return append(out, m.Archive...)
}

// rcptType is SparkPost's rcpt_type of the i-th address of Recipients.
func (m *MsysAPI) rcptType(i int) string {
	switch {
	case i < len(m.Cc):
		return "cc"
	case i < len(m.Cc)+len(m.Bcc):
		return "bcc"
	}
	return "archive"
}

// Encode returns the canonical JSON of m, as stored with the message.
func (m *MsysAPI) Encode() (json.RawMessage, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode X-MSYS-API: %w", err)
	}
	return b, nil
}

// ParseMsysAPI parses the (unfolded) value of an X-MSYS-API header. It
// refuses invalid JSON, a value that is not an object, a known field of the
// wrong type, a campaign_id over 64 bytes, an address in cc/bcc/archive
// that is not a valid mailbox, and text that is not valid UTF-8 or holds
// NUL (which PostgreSQL's jsonb cannot store). Unknown fields are ignored.
// Errors are *MsysAPIError.
func ParseMsysAPI(value string) (*MsysAPI, error) {
	value = strings.TrimSpace(value)
	if !utf8.ValidString(value) {
		return nil, msysErrorf("not valid UTF-8")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(value), &fields); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, msysErrorf("not a JSON object")
		}
		return nil, msysErrorf("invalid JSON")
	}
	if fields == nil { // "null"
		return nil, msysErrorf("not a JSON object")
	}
	if err := checkNoNUL([]byte(value)); err != nil {
		return nil, err
	}
	m := &MsysAPI{}
	if raw, ok := present(fields, "campaign_id"); ok {
		if err := json.Unmarshal(raw, &m.CampaignID); err != nil {
			return nil, msysErrorf("campaign_id must be a string")
		}
		if len(m.CampaignID) > maxCampaignID {
			return nil, msysErrorf("campaign_id longer than %d bytes", maxCampaignID)
		}
	}
	if raw, ok := present(fields, "metadata"); ok {
		if raw[0] != '{' {
			return nil, msysErrorf("metadata must be an object")
		}
		canon, err := canonicalJSON(raw)
		if err != nil {
			return nil, msysErrorf("metadata must be an object")
		}
		m.Metadata = canon
	}
	var err error
	if m.Tags, err = stringArray(fields, "tags"); err != nil {
		return nil, err
	}
	for _, name := range []string{"cc", "bcc", "archive"} {
		addrs, err := stringArray(fields, name)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			if _, err := parseMailbox(a, true); err != nil {
				return nil, msysErrorf("%s: bad address %q", name, a)
			}
		}
		switch name {
		case "cc":
			m.Cc = addrs
		case "bcc":
			m.Bcc = addrs
		default:
			m.Archive = addrs
		}
	}
	if raw, ok := present(fields, "options"); ok {
		if m.Options, err = parseOptions(raw); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// present returns a field's raw value, treating JSON null as absent.
func present(fields map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	raw, ok := fields[name]
	if !ok || len(raw) == 0 || string(raw) == "null" {
		return nil, false
	}
	return raw, true
}

func stringArray(fields map[string]json.RawMessage, name string) ([]string, error) {
	raw, ok := present(fields, name)
	if !ok {
		return nil, nil
	}
	var out []string
	if raw[0] != '[' || json.Unmarshal(raw, &out) != nil {
		return nil, msysErrorf("%s must be an array of strings", name)
	}
	for _, s := range out {
		// null elements decode to "": refuse them rather than store blanks.
		if s == "" {
			return nil, msysErrorf("%s must be an array of non-empty strings", name)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func parseOptions(raw json.RawMessage) (*MsysOptions, error) {
	var fields map[string]json.RawMessage
	if raw[0] != '{' || json.Unmarshal(raw, &fields) != nil {
		return nil, msysErrorf("options must be an object")
	}
	o := &MsysOptions{}
	bools := []struct {
		name string
		dst  **bool
	}{
		{"open_tracking", &o.OpenTracking},
		{"click_tracking", &o.ClickTracking},
		{"transactional", &o.Transactional},
		{"skip_suppression", &o.SkipSuppression},
		{"inline_css", &o.InlineCSS},
		{"sandbox", &o.Sandbox},
	}
	for _, b := range bools {
		v, ok := present(fields, b.name)
		if !ok {
			continue
		}
		var x bool
		if err := json.Unmarshal(v, &x); err != nil {
			return nil, msysErrorf("options.%s must be a boolean", b.name)
		}
		*b.dst = &x
	}
	strs := []struct {
		name string
		dst  *string
	}{
		{"ip_pool", &o.IPPool},
		{"dkim_key", &o.DKIMKey},
	}
	for _, s := range strs {
		v, ok := present(fields, s.name)
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, s.dst); err != nil {
			return nil, msysErrorf("options.%s must be a string", s.name)
		}
	}
	return o, nil
}

// checkNoNUL refuses a JSON text holding a NUL character in any string:
// PostgreSQL cannot store \u0000 in jsonb or text.
func checkNoNUL(b []byte) error {
	if !bytes.Contains(b, []byte(`\u0000`)) && bytes.IndexByte(b, 0) < 0 {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := d.Token()
		if err != nil {
			// The text already parsed once: the only error left is EOF.
			return nil
		}
		if s, ok := tok.(string); ok && strings.IndexByte(s, 0) >= 0 {
			return msysErrorf("NUL character in a string")
		}
	}
}

// canonicalJSON decodes raw (numbers kept as written) and encodes it again:
// keys sorted, duplicates collapsed, lone surrogates replaced, compact and
// HTML-escaped as encoding/json writes. So parse(encode(m)) == m, and the
// result is storable in PostgreSQL jsonb.
func canonicalJSON(raw json.RawMessage) (json.RawMessage, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}
