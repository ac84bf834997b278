package store

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Paging of key listings.
const (
	// DefaultKeyPage is the page size of ListKeys when KeyFilter.Limit is 0.
	DefaultKeyPage = 1000
	// MaxKeyPage is the largest page ListKeys returns; a larger
	// KeyFilter.Limit is lowered to it.
	MaxKeyPage = 10000
)

// ErrBadCursor: a KeyFilter.Cursor that ListKeys did not make (or that was
// damaged). Callers answer it as bad input.
var ErrBadCursor = errors.New("invalid cursor")

// KeyFilter selects a page of active keys for [Store.ListKeys]; zero fields
// do not filter. Every filter is applied in SQL: a page costs the same
// whatever the number of keys stored.
type KeyFilter struct {
	// Label keeps keys whose label contains it, ignoring the case of ASCII
	// letters.
	Label string
	// Subaccount keeps the keys of that subaccount (0: master account).
	Subaccount *int64
	// Grant keeps keys holding that grant.
	Grant string
	// Limit is the page size: 0 means DefaultKeyPage; at most MaxKeyPage.
	Limit int
	// Cursor is the next cursor of the previous page; "" starts from the
	// oldest key. It is opaque: a position in the listing order (creation
	// time, then id), so keys created or deleted between pages neither
	// shift nor repeat the others.
	Cursor string
}

// pageSize returns the effective page size of f.
func (f KeyFilter) pageSize() int {
	switch {
	case f.Limit <= 0:
		return DefaultKeyPage
	case f.Limit > MaxKeyPage:
		return MaxKeyPage
	}
	return f.Limit
}

// keyCursor is a decoded KeyFilter.Cursor: the last key of the previous
// page.
type keyCursor struct {
	created time.Time
	id      string
}

// encodeKeyCursor returns the cursor after key k.
func encodeKeyCursor(k *Key) string {
	raw := strconv.FormatInt(k.CreatedAt.UnixMicro(), 10) + ":" + k.ID
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

// decodeKeyCursor parses a cursor; ok is false for "".
func decodeKeyCursor(s string) (c keyCursor, ok bool, err error) {
	if s == "" {
		return c, false, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return c, false, fmt.Errorf("%w %q: use the cursor of the previous page's next link", ErrBadCursor, s)
	}
	us, id, found := strings.Cut(string(raw), ":")
	n, err := strconv.ParseInt(us, 10, 64)
	if !found || err != nil || id == "" {
		return c, false, fmt.Errorf("%w %q: use the cursor of the previous page's next link", ErrBadCursor, s)
	}
	return keyCursor{created: time.UnixMicro(n).UTC(), id: id}, true, nil
}

// finishKeyPage trims a page read with one row more than n and returns the
// next cursor ("" when that extra row did not exist).
func finishKeyPage(ks []*Key, n int) ([]*Key, string) {
	if len(ks) <= n {
		return ks, ""
	}
	ks = ks[:n]
	return ks, encodeKeyCursor(ks[n-1])
}
