package smtpd

import (
	"errors"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/limits"
)

// Named replies: the SPEC §4 table. Texts are short and generic; the cause
// of a failure goes to the log, never to the client (maddy exterrors).
var (
	// ErrAuthRequired answers MAIL before a successful AUTH.
	ErrAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	// ErrAuthInvalid answers a bad key, an unknown username, a key without
	// smtp/inject or a client outside the key's allowed IPs alike.
	ErrAuthInvalid = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	// ErrAuthTemporary answers AUTH when the key store cannot be read
	// (RFC 4954 §6).
	ErrAuthTemporary = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	// ErrAuthThrottled answers AUTH from an address with too many recent
	// failures; the connection is closed after it.
	ErrAuthThrottled = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed authentications, try later"}
	// ErrMalformedAuth answers an AUTH exchange that is not valid SASL.
	ErrMalformedAuth = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed authentication response"}
	// ErrRateLimited answers MAIL from a key over its message rate.
	ErrRateLimited = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Rate limit exceeded, try later"}
	// ErrTooBig answers a SIZE parameter or a message body over
	// max_message_bytes.
	ErrTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds limit"}
	// ErrTooManyRecipients answers the RCPT over max_recipients.
	ErrTooManyRecipients = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	// ErrBadAddress answers a MAIL or RCPT address that is not a valid
	// mailbox.
	ErrBadAddress = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad address syntax"}
	// ErrMalformedMessage answers a message whose header cannot be parsed.
	ErrMalformedMessage = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Malformed message header"}
	// ErrLineTooLong answers a message with a line over maxLineBytes (2000
	// bytes, twice RFC 5321's 1000), once the data has been read to its
	// end: the session goes on. Permanent: sending it again cannot help.
	ErrLineTooLong = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message line too long"}
	// ErrBareLineEnding answers a message with a bare CR or LF when
	// bare_line_endings is "reject".
	ErrBareLineEnding = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Bare CR or LF not allowed"}
	// ErrTooManyHops answers a message with more Received: fields than
	// max_received_headers: a mail loop (RFC 5321 §6.3).
	ErrTooManyHops = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: "Too many hops (mail loop?)"}
	// ErrHeaderTooBig answers a message whose header block is over
	// max_header_bytes.
	ErrHeaderTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Header too large"}
	// ErrInsufficientResources answers MAIL, or the end of the data, when
	// the in-flight budget (max_inflight_bytes) cannot hold the message, or
	// its spool file cannot be written. Nothing was stored.
	ErrInsufficientResources = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system resources, try later"}
	// ErrCommandTooLong closes a connection sending a command line of
	// absurd length (over maxCommandBytes).
	ErrCommandTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Command line too long, closing connection"}
	// ErrTooManyFromIP greets a connection over max_connections_per_ip.
	ErrTooManyFromIP = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections from your address, try later"}
	// ErrTooManyJunk closes a session past max_junk_commands commands that
	// made no progress.
	ErrTooManyJunk = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many commands without progress, closing connection"}
	// ErrAuthTimeout closes a connection not authenticated auth_timeout
	// after it connected.
	ErrAuthTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Authentication timeout, closing connection"}
	// ErrDataTimeout closes a connection whose DATA or BDAT transfer took
	// longer than data_timeout in all.
	ErrDataTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Data timeout, closing connection"}
	// ErrTemporary answers a message that could not be made durable: the
	// store is down, too slow, or failed. Nothing of it was stored.
	ErrTemporary = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure, message not accepted"}
	// ErrShuttingDown answers MAIL once Shutdown has begun, and is sent to
	// sessions still open when the grace period ends.
	ErrShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down"}
	// ErrTooManyConnections greets a connection over max_connections.
	ErrTooManyConnections = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections, try later"}
)

// limitReached is the 451 4.7.1 reply to MAIL over a sending limit, naming
// the limit (e.g. "sending limit of 1000 messages per hour for this key
// reached").
func limitReached(e *limits.ExceededError) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1},
		Message: "Rate limit exceeded, try later: " + e.Error()}
}

// unconfiguredDomain is the 550 5.7.1 reply for a From: domain that is not
// a sending domain of the sender.
func unconfiguredDomain(domain string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Unconfigured Sending Domain " + domain}
}

// unverifiedDomain is the 550 5.7.1 reply for a From: domain whose DKIM
// record was not verified, when relay.require_verified_domains is set.
func unverifiedDomain(domain string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Unverified Sending Domain " + domain}
}

// queued is the reply given once a message is committed.
func queued(id string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as " + id}
}

// reply is the one boundary between this package's errors and go-smtp,
// which would otherwise echo a raw error to the client ("Error: transaction
// failed: " + err.Error(), conn.go). It returns nil or a *smtp.SMTPError,
// always as an untyped error so that a nil reply is a nil interface.
//
// A *smtp.SMTPError anywhere in err's chain is the reply (named replies are
// wrapped with context for the log); otherwise the kind of failure decides,
// and anything unknown is a temporary failure (chasquid: "If we fail to
// queue, return a transient error").
func reply(err error) error {
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se == smtp.ErrDataTooLarge {
			return ErrTooBig
		}
		return se
	}
	var me *MsysAPIError
	if errors.As(err, &me) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Invalid X-MSYS-API header: " + me.Why}
	}
	switch {
	case errors.Is(err, errBadAddress):
		return ErrBadAddress
	case errors.Is(err, errNoBudget), errors.Is(err, errSpool):
		return ErrInsufficientResources
	case errors.Is(err, smtp.ErrTooLongLine):
		return ErrLineTooLong
	}
	// store.ErrUnavailable, a deadline, a cancelled session, a failed
	// transaction: the client may retry, and nothing was stored.
	return ErrTemporary
}
