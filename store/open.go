package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DBFileName is the name of the SQLite database file inside the data
// directory.
const DBFileName = "smtpgw.db"

// Open opens the store named by url without migrating it (callers call
// [Store.Migrate]). An empty url selects SQLite at dataDir/smtpgw.db,
// creating dataDir (mode 0700) if needed; a postgres:// or postgresql:// url
// selects PostgreSQL. PostgreSQL connections are made lazily, so Open succeeds
// while the server is down and operations then fail with [ErrUnavailable].
func Open(ctx context.Context, url, dataDir string) (Store, error) {
	switch {
	case url == "":
		if dataDir == "" {
			return nil, errors.New("open store: no database url and no data directory: set data_dir or database.url")
		}
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("open store: create data directory %q: %w (create it, or set data_dir to a writable directory)", dataDir, err)
		}
		return openSQLite(ctx, filepath.Join(dataDir, DBFileName))
	case IsPostgresURL(url):
		return openPostgres(ctx, url)
	default:
		return nil, fmt.Errorf("open store: unsupported database url scheme in %q: use \"\" for SQLite in data_dir, or a postgres:// or postgresql:// url", redactURL(url))
	}
}

// IsPostgresURL reports whether url selects the PostgreSQL backend.
func IsPostgresURL(url string) bool {
	l := strings.ToLower(url)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// redactURL keeps a url's scheme only, so error messages never carry a
// password given in it.
func redactURL(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		return url[:i+3] + "…"
	}
	if len(url) > 16 {
		return url[:16] + "…"
	}
	return url
}

// NewID returns a new message queue id: 20 lowercase hex characters, the
// first 12 the Unix time in milliseconds (so ids sort by creation time), the
// rest random.
func NewID() string {
	var b [10]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	// crypto/rand.Read never returns an error (Go 1.24+).
	_, _ = rand.Read(b[6:])
	return hex.EncodeToString(b[:])
}

// NewKeyID returns a new API key id: 16 lowercase hex characters from
// crypto/rand.
func NewKeyID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// msysFields is what events report of a message's X-MSYS-API header.
type msysFields struct {
	Metadata json.RawMessage `json:"metadata"`
	Tags     []string        `json:"tags"`
}

// MsysEventFields returns the metadata object and tags that events report
// for a message whose X-MSYS-API header is raw ([Message.MsysAPI],
// [Claimed.MsysAPI]). No header, or one that does not decode (smtpd
// validated it before), gives neither.
func MsysEventFields(raw json.RawMessage) (metadata json.RawMessage, tags []string) {
	if len(raw) == 0 {
		return nil, nil
	}
	var f msysFields
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, nil
	}
	if string(f.Metadata) == "null" {
		f.Metadata = nil
	}
	return f.Metadata, f.Tags
}

// messagePrep is what prepareMessage encodes of a message for the store's
// writer, in the caller's goroutine: the writer then only copies it.
type messagePrep struct {
	info      any     // encodeInfo of the message's Info
	injection []Event // its injection events, their details encoded
}

// injectionEvents returns the injection events of m, one per recipient:
// those prepareMessage made, or else new ones.
func injectionEvents(m *Message) []Event {
	if m.prep != nil {
		return m.prep.injection
	}
	return newInjectionEvents(m)
}

// messageInfo returns the encoded Info of m, as prepareMessage encoded it
// or else now.
func messageInfo(m *Message) (any, error) {
	if m.prep != nil {
		return m.prep.info, nil
	}
	return encodeInfo(&m.Info)
}

// newInjectionEvents builds the injection events of m, one per recipient.
func newInjectionEvents(m *Message) []Event {
	meta, tags := MsysEventFields(m.MsysAPI)
	evs := make([]Event, 0, len(m.Recipients))
	for _, r := range m.Recipients {
		evs = append(evs, Event{
			Type:       EventInjection,
			Time:       m.CreatedAt,
			MessageID:  m.ID,
			KeyID:      m.KeyID,
			Subaccount: m.Subaccount,
			Recipient:  r.Address,
			CampaignID: m.CampaignID,
			Metadata:   meta,
			Tags:       tags,
			Detail: EventDetail{
				MsgFrom:       m.MailFrom,
				FriendlyFrom:  m.Info.FriendlyFrom,
				Subject:       m.Info.Subject,
				MsgSize:       int64(len(m.Body)),
				IPAddress:     m.Info.IPAddress,
				RoutingDomain: r.Domain,
				RcptType:      m.Info.RcptType(r.Address),
				InjectionTime: m.CreatedAt,
			},
		})
	}
	return evs
}

// prepareMessage validates m and fills the defaults Enqueue documents:
// CreatedAt, and for each recipient MessageID, State, NextAttempt and
// UpdatedAt. Times are truncated to microseconds, the precision both
// backends store.
func prepareMessage(m *Message, now time.Time) error {
	if m == nil {
		return errors.New("nil message")
	}
	if m.ID == "" {
		return errors.New("message has no id")
	}
	if len(m.Recipients) == 0 {
		return fmt.Errorf("message %s has no recipients", m.ID)
	}
	if m.CreatedAt.IsZero() {
		m.CreatedAt = now
	}
	m.CreatedAt = m.CreatedAt.UTC().Truncate(time.Microsecond)
	m.Size = int64(len(m.Body))
	m.Info.Recipients = len(m.Recipients)
	for _, r := range m.Recipients {
		if r == nil {
			return fmt.Errorf("message %s has a nil recipient", m.ID)
		}
		r.MessageID = m.ID
		if r.State == "" {
			r.State = StateQueued
		}
		if r.NextAttempt.IsZero() {
			r.NextAttempt = m.CreatedAt
		}
		r.NextAttempt = r.NextAttempt.UTC().Truncate(time.Microsecond)
		r.UpdatedAt = m.CreatedAt
	}
	// What the writer would encode, encoded here.
	m.prep = nil
	info, err := encodeInfo(&m.Info)
	if err != nil {
		return err
	}
	evs := newInjectionEvents(m)
	if err := prepareDetails(evs); err != nil {
		return err
	}
	m.prep = &messagePrep{info: info, injection: evs}
	return nil
}

// messageSize is what a message counts against a group-commit batch limit.
func messageSize(m *Message) int {
	n := len(m.Body) + len(m.MsysAPI) + 256
	for _, r := range m.Recipients {
		n += len(r.Address) + 128
	}
	return n
}

// utc normalises a time for storage: UTC, microsecond precision.
func utc(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}

// limitOr returns l, or def when l is not positive.
func limitOr(l, def int) int {
	if l <= 0 {
		return def
	}
	return l
}
