package store

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// prefixStrings returns the text form of allowed-IP prefixes for storage.
func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// parsePrefixes parses stored allowed-IP prefixes.
func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("stored allowed ip %q: %w", s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// jsonStrings encodes a string list as a JSON array ("[]" for none).
func jsonStrings(ss []string) (string, error) {
	if len(ss) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(ss)
	if err != nil {
		return "", fmt.Errorf("encode list: %w", err)
	}
	return string(b), nil
}

// parseJSONStrings decodes a JSON array of strings; empty text is no list.
func parseJSONStrings(s string) ([]string, error) {
	if s == "" || s == "null" {
		return nil, nil
	}
	var ss []string
	if err := json.Unmarshal([]byte(s), &ss); err != nil {
		return nil, fmt.Errorf("decode stored list: %w", err)
	}
	if len(ss) == 0 {
		return nil, nil
	}
	return ss, nil
}

// addrString is ip as stored: "" for the zero Addr.
func addrString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}

// parseStoredAddr parses a stored address; "" (or anything unparsable) is
// the zero Addr.
func parseStoredAddr(s string) netip.Addr {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return ip
}

// keyFromParts fills the list fields of a scanned key.
func keyFromParts(k *Key, grants, ips []string) error {
	if len(grants) > 0 {
		k.Grants = grants
	}
	p, err := parsePrefixes(ips)
	if err != nil {
		return fmt.Errorf("key %s: %w", k.ID, err)
	}
	k.AllowedIPs = p
	return nil
}

// validOutcomeState reports whether s may be written by Finish.
func validOutcomeState(s string) bool {
	switch s {
	case StateDelivered, StateDeferred, StateBounced, StateExpired, StateQueued:
		return true
	}
	return false
}

// staleRecipient names a recipient whose outcome Finish ignored.
type staleRecipient struct{ messageID, address string }

// dropStaleEvents removes the events about recipients whose outcome was not
// applied: another worker owns them now and will report them.
func dropStaleEvents(evs []Event, stale map[staleRecipient]bool) []Event {
	if len(stale) == 0 {
		return evs
	}
	out := evs[:0:0]
	for _, e := range evs {
		if e.Recipient != "" && stale[staleRecipient{e.MessageID, e.Recipient}] {
			continue
		}
		out = append(out, e)
	}
	return out
}

// prepareEvents sets the time of events that have none and normalises
// times for storage.
func prepareEvents(evs []Event, now time.Time) {
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
		evs[i].Time = utc(evs[i].Time)
		if string(evs[i].Metadata) == "null" {
			evs[i].Metadata = nil
		}
	}
}

// sortClaimed orders claimed recipients so that those of one message and
// domain are adjacent.
func sortClaimed(cs []*Claimed) {
	sort.Slice(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.MessageID != b.MessageID {
			return a.MessageID < b.MessageID
		}
		if a.Domain != b.Domain {
			return a.Domain < b.Domain
		}
		return a.ID < b.ID
	})
}

// normDomain is the stored form of a domain name.
func normDomain(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}

// wake sends on a wakeup channel without blocking (coalescing).
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
