// Package auth owns smtpgw's API keys (SPEC §3): their format, grants and
// allowed client addresses, the admin operations on them ([Manager]), their
// verification for SMTP AUTH and the HTTP API ([Verifier]), and the throttle
// on failed authentications ([FailureLimiter]): one budget per client
// address that the Verifier holds, so SMTP AUTH, the HTTP API, the console
// and /metrics spend the same failures.
//
// A key is 40 lowercase hex characters from crypto/rand. The store keeps
// only its SHA-256 and its first four characters; the key itself is shown
// once, when [Manager.Create] makes it.
//
// Verifying a presented key ([Verifier.VerifyGrant]) walks these steps:
//
//  1. A string that is not 40 lowercase hex characters is an unknown key;
//     the store is not asked.
//  2. The key is hashed (SHA-256) and the hash looked up: first in a
//     per-node cache whose entries live auth.cache_ttl (default 5 s), then
//     with store.KeyByHash. Store failures are returned wrapped, not as
//     [*Error], so SMTP answers 454 rather than 535.
//  3. The stored hash is compared with the computed one in constant time;
//     then the key must not be revoked nor expired (its expires_at is
//     compared with the clock on every verification, cache hits included,
//     so the cache never lets a key through past its expiry), the client
//     address must be in its allowed IPs, and it must hold the grant asked
//     for. An unknown key is
//     checked against a decoy key so that it costs the same work as a known
//     key refused for its address.
//  4. Success is recorded as the key's last use (time and client address)
//     by a background writer that batches store.TouchKey calls, at most
//     once per key per minute: the AUTH path never writes to the database.
//
// A key revoked or changed through a [Manager] holding the [Verifier] is
// evicted from that node's cache at once; other nodes see the change when
// their cache entry expires.
//
// Errors returned for refused keys are [*Error] values wrapping one of
// [ErrUnknownKey], [ErrRevokedKey], [ErrExpiredKey], [ErrMissingGrant] or
// [ErrIPNotAllowed].
// They are meant for logs (they never contain the key) and must not reach
// the client, which only learns that authentication failed.
//
// [Manager.Rotate] replaces a key by a twin (same label, grants,
// subaccount, allowed IPs and sending limits) and makes the old one expire
// after an overlap, so that an application can switch keys without a
// refused message.
//
// Key parameters an admin must fix (label, grants, allowed IPs,
// subaccount, expiry) are refused by [Manager] with a [*ParamError] naming the
// parameter; it matches [ErrInvalid]. The rules live here only: the CLI
// and the HTTP API pass input through and report the error.
package auth

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Reasons a key is refused. [Verifier] returns them inside an [*Error];
// test with errors.Is.
var (
	// ErrUnknownKey: the key is malformed or no key has its hash.
	ErrUnknownKey = errors.New("unknown key")
	// ErrRevokedKey: the key was deleted (revoked).
	ErrRevokedKey = errors.New("revoked key")
	// ErrExpiredKey: the key's expiry time (expires_at) has passed.
	ErrExpiredKey = errors.New("expired key")
	// ErrMissingGrant: the key lacks the grant the operation needs.
	ErrMissingGrant = errors.New("missing grant")
	// ErrIPNotAllowed: the client address is not in the key's allowed IPs.
	ErrIPNotAllowed = errors.New("client address not allowed for key")
)

// ErrThrottled: the client address used up its failed-authentication
// budget; [Verifier.VerifyGrant] returns it in a [*ThrottledError] without
// looking the key up.
var ErrThrottled = errors.New("too many failed authentications from this address")

// ThrottledError is VerifyGrant's refusal of a client address that failed
// too often. It matches ErrThrottled.
type ThrottledError struct {
	IP netip.Addr
	// RetryAfter is how long until the address may try again.
	RetryAfter time.Duration
}

// Error returns a log line.
func (e *ThrottledError) Error() string {
	return fmt.Sprintf("%s: %s (retry after %s)", ErrThrottled, e.IP, e.RetryAfter.Round(time.Second))
}

// Unwrap returns ErrThrottled.
func (e *ThrottledError) Unwrap() error { return ErrThrottled }

// Error describes a refused key for the log. It never contains the key.
type Error struct {
	// Reason is one of ErrUnknownKey, ErrRevokedKey, ErrExpiredKey,
	// ErrMissingGrant and ErrIPNotAllowed.
	Reason error
	// KeyID is the refused key's id; "" for an unknown key.
	KeyID string
	// ShortKey is the refused key's first four characters as stored; "" for
	// an unknown key (the first characters of a wrong password are not
	// logged).
	ShortKey string
	// Grant is the grant that was required ("" if none).
	Grant string
	// IP is the client address checked.
	IP netip.Addr
	// Subaccount is the subaccount refused (ErrUnknownSubaccount,
	// ErrSubaccountInactive), 0 otherwise.
	Subaccount int64
	// Status is the status of a refused subaccount ("suspended").
	Status string
}

// Error returns a log line such as
// "revoked key (key 0123456789abcdef, short key ab12, client 192.0.2.7)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Reason.Error())
	if e.Reason == ErrMissingGrant && e.Grant != "" {
		b.WriteString(" " + e.Grant)
	}
	var attrs []string
	if e.KeyID != "" {
		attrs = append(attrs, "key "+e.KeyID)
	}
	if e.ShortKey != "" {
		attrs = append(attrs, "short key "+e.ShortKey)
	}
	if e.Subaccount != 0 {
		attrs = append(attrs, fmt.Sprintf("subaccount %d", e.Subaccount))
	}
	if e.Status != "" {
		attrs = append(attrs, "status "+e.Status)
	}
	if e.IP.IsValid() {
		attrs = append(attrs, "client "+e.IP.String())
	}
	if len(attrs) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(attrs, ", "))
	}
	return b.String()
}

// Unwrap returns Reason, so errors.Is(err, ErrRevokedKey) works.
func (e *Error) Unwrap() error { return e.Reason }

// Identity is what a verified key allows: who is sending, for which
// subaccount, with which grants.
type Identity struct {
	// KeyID is the key's public id (store.Key.ID).
	KeyID string
	// ShortKey is the key's first four characters, for logs.
	ShortKey string
	// Label is the admin's name for the key.
	Label string
	// Subaccount is the key's subaccount; 0 is the master account.
	Subaccount int64
	// Grants are the key's grants (a copy; the caller may keep it).
	Grants []string
}

// Has reports whether the identity holds grant.
func (id *Identity) Has(grant string) bool {
	return id != nil && slices.Contains(id.Grants, grant)
}
