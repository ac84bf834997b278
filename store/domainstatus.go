package store

import (
	"context"
	"time"
)

// DKIM and SPF verification results (SparkPost's values).
const (
	VerifyUnverified = "unverified"
	VerifyValid      = "valid"
	VerifyInvalid    = "invalid"
)

// DomainStatus is the result of the last verification of a sending
// domain's DNS records. The zero value (after [DomainStatusDefaults]) is
// "never verified".
type DomainStatus struct {
	// OwnershipVerified: the DKIM record was found and matched.
	OwnershipVerified bool
	DKIMStatus        string // a Verify* value
	SPFStatus         string // a Verify* value
	DKIMError         string // why DKIM is invalid, "" if not
	SPFError          string // why SPF is invalid, "" if not
	VerifiedAt        time.Time
}

// DomainStatusDefaults returns the status of a domain never verified.
func DomainStatusDefaults() DomainStatus {
	return DomainStatus{DKIMStatus: VerifyUnverified, SPFStatus: VerifyUnverified}
}

// DomainUpdateStore is the part of [Store] that changes sending domains
// after creation and keeps their verification status.
type DomainUpdateStore interface {
	// UpdateDomain writes d's Shared flag and Selector; ErrNotFound if no
	// such domain. A changed selector resets the verification status.
	UpdateDomain(ctx context.Context, d *Domain) error
	// DomainStatus returns the domain's verification status
	// (DomainStatusDefaults if never verified); ErrNotFound if no such
	// domain.
	DomainStatus(ctx context.Context, name string) (DomainStatus, error)
	// DomainStatuses returns the status of every verified domain, by name.
	DomainStatuses(ctx context.Context) (map[string]DomainStatus, error)
	// SetDomainStatus stores the result of a verification; ErrNotFound if
	// no such domain.
	SetDomainStatus(ctx context.Context, name string, st DomainStatus) error
}
