package auth

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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
)

// ParamError is a key parameter refused by [Manager.Create],
// [Manager.Update], [ValidateGrants] or [ParseAllowedIPs]. It matches
// [ErrInvalid] under errors.Is.
type ParamError struct {
	// Field is the parameter at fault: FieldLabel, FieldGrants,
	// FieldAllowedIPs or FieldSubaccount. Callers with other names for
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
	if name == FieldAllowedIPs {
		name = "allowed IPs"
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
