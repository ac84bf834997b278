package smtpd

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseMsysAPI(t *testing.T) {
	t.Parallel()
	tru, fals := true, false
	good := []struct {
		in   string
		want MsysAPI
	}{
		{`{}`, MsysAPI{}},
		{` {"campaign_id": "c1", "future_field": [1, 2]} `, MsysAPI{CampaignID: "c1"}},
		{`{"campaign_id": "` + strings.Repeat("é", 32) + `"}`, MsysAPI{CampaignID: strings.Repeat("é", 32)}},
		{`{"metadata": {"b": 1.50, "a": "<x>", "b": 2}}`, MsysAPI{Metadata: []byte(`{"a":"\u003cx\u003e","b":2}`)}},
		{`{"tags": ["a", "b"], "cc": ["c@example.com"], "bcc": ["b@example.com"], "archive": ["a@example.com"]}`,
			MsysAPI{Tags: []string{"a", "b"}, Cc: []string{"c@example.com"}, Bcc: []string{"b@example.com"}, Archive: []string{"a@example.com"}}},
		{`{"tags": [], "cc": null, "options": {"open_tracking": true, "sandbox": false, "ip_pool": "p", "dkim_key": "k", "x": 1}}`,
			MsysAPI{Options: &MsysOptions{OpenTracking: &tru, Sandbox: &fals, IPPool: "p", DKIMKey: "k"}}},
	}
	for _, tc := range good {
		got, err := ParseMsysAPI(tc.in)
		if err != nil {
			t.Errorf("ParseMsysAPI(%s): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("ParseMsysAPI(%s) = %+v, want %+v", tc.in, *got, tc.want)
		}
	}
	if got, _ := ParseMsysAPI(`{"cc": ["a@x.example"], "bcc": ["b@x.example"], "archive": ["c@x.example"]}`); strings.Join(got.Recipients(), " ") != "a@x.example b@x.example c@x.example" {
		t.Errorf("Recipients() = %v", got.Recipients())
	}

	bad := []struct{ in, why string }{
		{``, "invalid JSON"},
		{`{"a":`, "invalid JSON"},
		{`[]`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{`"s"`, "not a JSON object"},
		{`{"campaign_id": 5}`, "campaign_id must be a string"},
		{`{"campaign_id": "` + strings.Repeat("c", 65) + `"}`, "campaign_id longer than 64 bytes"},
		{`{"campaign_id": "` + strings.Repeat("é", 33) + `"}`, "campaign_id longer than 64 bytes"},
		{`{"metadata": []}`, "metadata must be an object"},
		{`{"metadata": "x"}`, "metadata must be an object"},
		{`{"tags": "a"}`, "tags must be an array of strings"},
		{`{"tags": [1]}`, "tags must be an array of strings"},
		{`{"tags": [null]}`, "tags must be an array of non-empty strings"},
		{`{"cc": ["not an address"]}`, `cc: bad address "not an address"`},
		{`{"bcc": {"a": 1}}`, "bcc must be an array of strings"},
		{`{"archive": ["a@b..c"]}`, `archive: bad address "a@b..c"`},
		{`{"options": []}`, "options must be an object"},
		{`{"options": {"open_tracking": "yes"}}`, "options.open_tracking must be a boolean"},
		{`{"options": {"ip_pool": 1}}`, "options.ip_pool must be a string"},
		{`{"tags": ["a\u0000b"]}`, "NUL character in a string"},
		{`{"metadata": {"k": "\u0000"}}`, "NUL character in a string"},
		{"{\"tags\": [\"\xff\"]}", "not valid UTF-8"},
	}
	for _, tc := range bad {
		_, err := ParseMsysAPI(tc.in)
		var me *MsysAPIError
		if !errors.As(err, &me) || me.Why != tc.why {
			t.Errorf("ParseMsysAPI(%q) = %v, want %q", tc.in, err, tc.why)
		}
	}
}

// FuzzParseMsysAPI checks ParseMsysAPI's invariants: it never panics, an
// accepted header has a campaign id of at most 64 bytes and valid
// recipients, and its encoding parses back to the same value (which
// encodes to the same bytes).
func FuzzParseMsysAPI(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"campaign_id":"c","metadata":{"a":[1,{"b":null}]},"tags":["x"],"cc":["a@b.example"],"options":{"sandbox":true}}`,
		`{"metadata":{"html":"<b>&</b>","n":1e400}}`,
		`{"tags":["\ud800"]}`,
		`[1]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ParseMsysAPI(in)
		if err != nil {
			var me *MsysAPIError
			if !errors.As(err, &me) || me.Why == "" {
				t.Fatalf("error %v is not an *MsysAPIError with a reason", err)
			}
			return
		}
		if len(m.CampaignID) > maxCampaignID {
			t.Fatalf("campaign_id of %d bytes accepted", len(m.CampaignID))
		}
		for _, a := range m.Recipients() {
			if _, err := parseMailbox(a, true); err != nil {
				t.Fatalf("recipient %q accepted", a)
			}
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		back, err := ParseMsysAPI(string(enc))
		if err != nil {
			t.Fatalf("re-parse of %s: %v", enc, err)
		}
		if !reflect.DeepEqual(m, back) {
			t.Fatalf("re-parse differs:\n%+v\n%+v", m, back)
		}
		enc2, err := back.Encode()
		if err != nil || string(enc2) != string(enc) {
			t.Fatalf("re-encoding differs: %s vs %s (%v)", enc, enc2, err)
		}
	})
}
