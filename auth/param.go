package auth

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxLabelLen is the longest key label accepted, in characters (SparkPost's
// limit).
const MaxLabelLen = 1024

// ErrInvalid is matched (errors.Is) by every [*ParamError]: a key parameter
// the admin must fix. Callers map it to their own "bad input" answer (the
// HTTP API's 422, the CLI's message); anything else from a [Manager] is a
// missing key or a store fault.
var ErrInvalid = errors.New("invalid key parameter")

// Names of the key parameters in [ParamError.Field].
const (
	FieldLabel      = "label"
	FieldGrants     = "grants"
	FieldAllowedIPs = "allowed_ips"
	FieldSubaccount = "subaccount"
	FieldExpiresAt  = "expires_at"
	FieldOverlap    = "overlap"
	FieldCursor     = "cursor"
)

// ParamError is a key parameter refused by [Manager.Create],
// [Manager.Update], [ValidateGrants] or [ParseAllowedIPs]. It matches
// [ErrInvalid] under errors.Is.
type ParamError struct {
	// Field is the parameter at fault: FieldLabel, FieldGrants,
	// FieldAllowedIPs, FieldSubaccount, FieldExpiresAt, FieldOverlap or
	// FieldCursor. Callers with other names for
	// these (the HTTP API's valid_ips) translate it.
	Field string
	// Err says what is wrong with the value and how to fix it, without
	// naming the field, e.g. `"10.0.0.0/33" is not an IP address or CIDR
	// prefix`.
	Err error
}

// Error returns "field: problem", e.g.
// `allowed IPs: "10.0.0.0/33" is not an IP address or CIDR prefix`.
func (e *ParamError) Error() string {
	name := e.Field
	switch name {
	case FieldAllowedIPs:
		name = "allowed IPs"
	case FieldExpiresAt:
		name = "expiry"
	}
	if name == "" {
		return e.Err.Error()
	}
	return name + ": " + e.Err.Error()
}

// Unwrap returns Err.
func (e *ParamError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrInvalid].
func (e *ParamError) Is(target error) bool { return target == ErrInvalid }

// paramErrorf returns a *ParamError for field with a formatted Err.
func paramErrorf(field, format string, args ...any) *ParamError {
	return &ParamError{Field: field, Err: fmt.Errorf(format, args...)}
}

// checkLabel trims a label and checks it is valid UTF-8, not empty and at
// most MaxLabelLen characters long. It is the only place label rules live.
func checkLabel(label string) (string, error) {
	label = strings.TrimSpace(label)
	if !utf8.ValidString(label) {
		return "", paramErrorf(FieldLabel, "not valid UTF-8")
	}
	if label == "" {
		return "", paramErrorf(FieldLabel, "empty: name the key after its user, e.g. %q", "newsletter app")
	}
	if n := utf8.RuneCountInString(label); n > MaxLabelLen {
		return "", paramErrorf(FieldLabel, "%d characters long: at most %d are allowed", n, MaxLabelLen)
	}
	return label, nil
}

// checkGrants normalises grants and validates them (see ValidateGrants).
func checkGrants(grants []string) ([]string, error) {
	grants = NormalizeGrants(grants)
	if err := ValidateGrants(grants); err != nil {
		return nil, err
	}
	return grants, nil
}

// checkSubaccount refuses a negative subaccount id.
func checkSubaccount(sub int64) error {
	if sub < 0 {
		return paramErrorf(FieldSubaccount, "%d is not a subaccount id: give 0 (master account) or a positive subaccount id", sub)
	}
	return nil
}

// checkMasterOnly refuses grants that only a master-account key may hold
// (metrics/view) on a key of subaccount sub; field names the parameter
// being set that makes the combination wrong. The Prometheus metrics count
// every account's traffic, so a subaccount key reading them would see
// other accounts' activity.
func checkMasterOnly(grants []string, sub int64, field string) error {
	if sub == 0 || !slices.Contains(grants, GrantMetricsView) {
		return nil
	}
	if field == FieldSubaccount {
		return paramErrorf(field, "the key holds %s, which a subaccount key may not hold (the metrics cover every account): remove the grant in the same update, or create a new key for subaccount %d",
			GrantMetricsView, sub)
	}
	return paramErrorf(field, "%s is for master-account keys only: the metrics cover every account, so a key of subaccount %d may not read them",
		GrantMetricsView, sub)
}

// ParseExpiry parses an expiry given as an RFC 3339 time
// ("2027-01-31T00:00:00Z") or a duration from now ("720h", "90d", "30m");
// d is a day of 24 hours. The result is in UTC; it is not checked to be in
// the future (Manager does that).
func ParseExpiry(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	d, err := parseDays(s)
	if err != nil {
		return time.Time{}, paramErrorf(FieldExpiresAt, "%q is neither an RFC 3339 time (e.g. 2027-01-31T00:00:00Z) nor a duration (e.g. 720h or 90d)", s)
	}
	return now.Add(d).UTC(), nil
}

// parseDays is time.ParseDuration that also takes whole days ("90d").
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*365 {
			return 0, fmt.Errorf("bad days %q", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// ParseOverlap parses the overlap of a rotation: a duration such as 24h,
// 90m or 7d.
func ParseOverlap(s string) (time.Duration, error) {
	d, err := parseDays(strings.TrimSpace(s))
	if err != nil || d < 0 {
		return 0, paramErrorf(FieldOverlap, "%q is not a duration: give e.g. 24h, 90m or 7d (0: the old key stops at once)", s)
	}
	return d, nil
}

// checkExpiry refuses an expiry time that is not in the future.
func checkExpiry(t, now time.Time) error {
	if !t.After(now) {
		return paramErrorf(FieldExpiresAt, "%s is not in the future: give a later time, or delete the key to stop it now",
			t.UTC().Format(time.RFC3339))
	}
	return nil
}
